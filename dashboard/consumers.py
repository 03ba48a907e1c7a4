"""Live runs list: row fragments pushed over a websocket for htmx's ws extension.

Two sources of change meet in the runs group: the trace receiver sends
``runs.changed`` after every ingest, and a visibility poller (one per process,
running only while someone listens) sends the same message for runs that
started or closed in Temporal, with or without spans. Each consumer renders
the changed runs with the row partial the page uses, within its own filters:
a row it already shows replaces itself by id, a new one is prepended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.http import QueryDict
from django.template.loader import render_to_string

from dashboard import runs as run_list
from dashboard import temporal
from tracing.groups import runs_group

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# Visibility is eventually consistent; look back this far so late rows are seen.
POLL_OVERLAP_NS = 3_000_000_000
POLL_LIMIT = 200
ROW_TEMPLATE = "dashboard/runs.html#run-row"


class VisibilityPoller:
    """Polls Temporal for runs started or closed since the last poll, while anyone listens."""

    def __init__(self) -> None:
        self.listeners = 0
        self.task: asyncio.Task[None] | None = None

    def acquire(self) -> None:
        self.listeners += 1
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    def release(self) -> None:
        self.listeners = max(self.listeners - 1, 0)
        if self.listeners == 0 and self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        seen: dict[tuple[str, str], str] = {}
        since = time.time_ns() - POLL_OVERLAP_NS
        while True:
            await asyncio.sleep(POLL_SECONDS)
            polled_at = time.time_ns()
            stamp = temporal.quote(
                datetime.fromtimestamp(since / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            )
            try:
                found = await temporal.list_runs(
                    f"StartTime >= {stamp} OR CloseTime >= {stamp}", POLL_LIMIT
                )
            except (temporal.TemporalUnavailable, ValueError) as exc:
                logger.debug("runs poller: %s", exc)
                continue
            current = {(r.workflow_id, r.run_id): r.status for r in found}
            changed = [key for key, status in current.items() if seen.get(key) != status]
            seen = current
            since = polled_at - POLL_OVERLAP_NS
            if not changed:
                continue
            layer = get_channel_layer()
            if layer is not None:
                await layer.group_send(
                    runs_group(),
                    {
                        "type": "runs.changed",
                        "runs": [{"workflow_id": w, "run_id": r} for w, r in changed],
                    },
                )


poller = VisibilityPoller()


class RunsConsumer(AsyncWebsocketConsumer):
    filters: run_list.Filters
    known: set[tuple[str, str]]
    paged: bool
    filtered: bool
    listening = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        params = QueryDict(self.scope.get("query_string", b"").decode("latin-1"))
        form = run_list.RunFilterForm(params)
        form.is_valid()
        self.filters = form.filters()
        self.filtered = self.filters != run_list.Filters()
        cursor = form.cleaned_data.get("cursor")
        # Only the newest page grows; an older page only updates its rows.
        self.paged = cursor is not None
        try:
            rendered_ns = int(params.get("rendered", "0"))
        except ValueError:
            rendered_ns = 0
        # Accept before the page query: a socket that a quick filter change
        # closes while still connecting makes the browser log an error.
        await self.channel_layer.group_add(runs_group(), self.channel_name)
        await self.accept()
        poller.acquire()
        self.listening = True
        page = await run_list.list_page(self.filters, cursor)
        # Rows that started after the page was rendered are not on it yet.
        late = [r for r in page.rows if rendered_ns and r.start_ns > rendered_ns]
        self.known = {r.key for r in page.rows} - {r.key for r in late}
        if late and not self.paged:
            await self._send_rows(late)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "listening", False):
            self.listening = False
            poller.release()
            await self.channel_layer.group_discard(runs_group(), self.channel_name)

    async def runs_changed(self, event: dict[str, Any]) -> None:
        keys = {
            (str(r.get("workflow_id", "")), str(r.get("run_id", ""))) for r in event.get("runs", [])
        }
        if not keys:
            return
        rows = await run_list.rows_for(keys, self.filters)
        await self._send_rows(rows)
        if self.filtered:
            # A shown run that no longer matches (e.g. it left the status filtered on).
            gone = (keys & self.known) - {r.key for r in rows}
            for key in gone:
                self.known.discard(key)
                await self.send(
                    text_data=f'<tr id="{run_list.dom_id(*key)}" hx-swap-oob="delete"></tr>'
                )

    async def _send_rows(self, rows: list[run_list.RunRow]) -> None:
        # Oldest first, so prepending leaves the newest on top.
        for row in sorted(rows, key=lambda r: r.sort_key):
            html: str
            # As the page renders it: a search's snippet and the link that carries it.
            ctx = {"run": row, "search_text": self.filters.text}
            if row.key in self.known:
                html = render_to_string(ROW_TEMPLATE, {**ctx, "oob": True}).strip()
            elif not self.paged:
                self.known.add(row.key)
                html = (
                    '<tbody hx-swap-oob="afterbegin:#runs-rows">'
                    + render_to_string(ROW_TEMPLATE, ctx)
                    + "</tbody>"
                )
            else:
                continue
            await self.send(text_data=html)

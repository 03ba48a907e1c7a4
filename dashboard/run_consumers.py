"""Live run page: re-rendered partials pushed over a websocket as spans and events arrive.

The consumer joins the run's group (tracing.groups), where the OTLP receiver
announces new spans, and polls Temporal for new history events while the run
is open. Whenever either changes it renders the same partials the page uses
and sends them for the htmx ws extension to swap in by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.http import QueryDict
from django.template.loader import render_to_string

from dashboard import run_page
from tracing.groups import run_group

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# Spans come in bursts (one export per batch); one re-render covers a burst.
COALESCE_SECONDS = 0.25


class RunConsumer(AsyncWebsocketConsumer):
    workflow_id: str
    run_id: str
    group: str
    seen: str
    trace_view: str = "agent"
    search: str = ""
    poller: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        kwargs = self.scope["url_route"]["kwargs"]
        self.workflow_id, self.run_id = kwargs["workflow_id"], kwargs["run_id"]
        params = QueryDict(self.scope.get("query_string", b"").decode("latin-1"))
        self.seen = params.get("v", "")
        # A search the page marks (``?q=`` from the runs list): every re-render keeps it.
        self.search = params.get("q", "")[:200]
        # The trace view the page shows, as the run view chose it (dashboard.run_views).
        cookie = (self.scope.get("cookies") or {}).get("loomview_trace", "")
        self.trace_view = cookie if cookie in run_page.TRACE_VIEWS else "agent"
        self.group = run_group(self.workflow_id, self.run_id)
        self.changed = asyncio.Event()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        self.poller = asyncio.create_task(self.watch())

    async def disconnect(self, code: int) -> None:
        if self.poller is not None:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def run_spans(self, event: dict[str, Any]) -> None:
        self.changed.set()

    async def watch(self) -> None:
        open_run = True
        while True:
            try:
                open_run = await self.refresh()
            except Exception:
                # A live page must outlive one bad refresh; the next one retries.
                logger.exception("live update of %s / %s failed", self.workflow_id, self.run_id)
            timeout = POLL_SECONDS if open_run else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=timeout)
            if self.changed.is_set():
                await asyncio.sleep(COALESCE_SECONDS)
                self.changed.clear()

    async def refresh(self) -> bool:
        """Push the page's partials if anything changed; return whether the run is open.

        The signature comes from cheap inputs (history length, the run's summary
        row); the page is loaded, correlated and rendered only when it changed.
        """
        current, is_open = await run_page.live_signature(self.workflow_id, self.run_id)
        if current == self.seen:
            return is_open
        loaded = await run_page.load(self.workflow_id, self.run_id)
        text, matched = await run_page.search_of(self.search, self.workflow_id, self.run_id)
        ctx = await run_page.build_kept(
            self.workflow_id,
            self.run_id,
            loaded,
            trace_view=self.trace_view,
            marked=matched,
            lazy_history=True,
            search=text,
        )
        ctx.update({"search_text": text, "search_matches": len(matched)})
        self.seen = ctx["live_sig"]
        ctx.update({"oob": True, "history_mode": "compact"})
        html = await sync_to_async(render_to_string)("dashboard/_run_live.html", ctx)
        await self.send(text_data=html)
        # Without Temporal we cannot tell; keep polling so the page recovers.
        return bool(ctx["is_open"])

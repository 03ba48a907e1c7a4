"""Tie spans that carry no Temporal ids to their runs, by reading the runs' histories.

``OpenAIAgentsPlugin(use_otel_instrumentation=True)`` exports spans that name
no workflow, no run and no activity; only the run's history knows which trace
and span each workflow start, signal, update and scheduled activity belongs
to (tracing.links). Client spans such as ``SignalWorkflow:`` or
``StartWorkflowUpdate:`` may know their workflow but not its run; the run is
the one that was open when they started.

The linker asks Temporal about the runs that were open while such spans were
recorded, reads their histories and hands the ties to the store
(tracing.store.link_run), which keeps them: a span of a tied trace that
arrives later, hours later for workflow-side spans, is tied at ingest. It runs
in the background next to the forwarder (``serve``, started with the
maintenance jobs of ``manage.py runforwarder``), and on demand: the runs list ties what is
pending before it reads summaries, and the run page ties its run from the
history it has just read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from temporalio.api.history.v1 import HistoryEvent

from dashboard import temporal
from tracing import links, store

logger = logging.getLogger(__name__)


# Spans older than this are not looked at again: their runs were read already.
PENDING_WINDOW_NS = 15 * 60 * 10**9
# Visibility and clocks disagree a little; look this far around the spans.
SLACK_NS = 60 * 10**9
RUNS_PER_SWEEP = 50
INTERVAL_SECONDS = 1.0
_MEMO_SIZE = 10_000

# A client span starts a moment before the server records what it asked for.
CLIENT_SLACK_NS = 10**9

# Runs whose history was read: their history length then, or -1 once closed
# (a closed run's history never changes).
_read: OrderedDict[tuple[str, str], int] = OrderedDict()


def _remember(key: tuple[str, str], length: int) -> None:
    _read[key] = length
    _read.move_to_end(key)
    while len(_read) > _MEMO_SIZE:
        _read.popitem(last=False)


def _stamp(ns: int) -> str:
    return temporal.quote(
        datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )


async def link_history(workflow_id: str, run_id: str, events: list[HistoryEvent]) -> int:
    """Tie spans through one run's history; returns how many spans changed."""
    found = links.history_links(events)
    if not found:
        return 0
    return await sync_to_async(store.link_run)(workflow_id, run_id, found)


async def _link_run(run: temporal.VisibilityRun) -> int:
    key = (run.workflow_id, run.run_id)
    seen = _read.get(key)
    try:
        if seen == -1:
            return 0
        if seen is not None:
            # An open run read before: read it again only if its history grew.
            state = await temporal.run_state(*key)
            if state.is_open and state.history_length == seen:
                return 0
        fetched = await temporal.fetch_history(*key)
    except temporal.RunNotFound:
        return 0
    events = list(fetched.history.events)
    changed = await link_history(run.workflow_id, run.run_id, events)
    _remember(key, -1 if fetched.closed else len(events))
    return changed


def _ns(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1e9)


async def _tie_runless(runless: list[tuple[int, str, int]]) -> int:
    """A span that knows its workflow but not its run: the run open when it started."""
    by_workflow: dict[str, list[tuple[int, int]]] = {}
    for pk, workflow_id, start_ns in runless:
        by_workflow.setdefault(workflow_id, []).append((pk, start_ns))
    changed = 0
    for workflow_id, spans in list(by_workflow.items())[:RUNS_PER_SWEEP]:
        runs = await temporal.list_runs(f"WorkflowId = {temporal.quote(workflow_id)}", 50)
        windows = [(_ns(r.start_time) or 0, _ns(r.close_time), r.run_id) for r in runs]
        by_run: dict[str, list[int]] = {}
        for pk, start_ns in spans:
            # Client spans start just before the server records the start.
            open_then = [
                run_id
                for begin, end, run_id in windows
                if begin - CLIENT_SLACK_NS <= start_ns and (end is None or start_ns <= end)
            ]
            if len(open_then) == 1:
                by_run.setdefault(open_then[0], []).append(pk)
        for run_id, pks in by_run.items():
            changed += await sync_to_async(store.assign_run)(pks, workflow_id, run_id)
    return changed


# Runs that closed after this were not looked at yet (per process).
_closed_since_ns: int | None = None


async def _link_closed(max_runs: int) -> int:
    """Runs with spans that closed since the last sweep: their history counts the
    model calls and usage whose spans never arrived (instrumentations drop some)."""
    global _closed_since_ns
    now = time.time_ns()
    since = _closed_since_ns if _closed_since_ns is not None else now - PENDING_WINDOW_NS
    runs = await temporal.list_runs(f"CloseTime >= {_stamp(since - SLACK_NS)}", max_runs)
    keys = {(r.workflow_id, r.run_id) for r in runs if _read.get((r.workflow_id, r.run_id)) != -1}
    wanted = await sync_to_async(store.runs_without_history)(keys) if keys else set()
    changed = 0
    for run in runs:
        if (run.workflow_id, run.run_id) in wanted:
            changed += await _link_run(run)
    if len(runs) < max_runs:
        _closed_since_ns = now
    return changed


async def link_pending(max_runs: int = RUNS_PER_SWEEP) -> int:
    """Tie what is still untied among recent spans, and read the histories of runs
    that closed since; returns how many spans changed.

    Raises temporal.TemporalUnavailable.
    """
    pending = await sync_to_async(store.untied)(time.time_ns() - PENDING_WINDOW_NS)
    changed = await _link_closed(max_runs)
    if pending.window is not None:
        start, end = pending.window
        query = (
            f"StartTime <= {_stamp(end + SLACK_NS)} AND "
            f"(ExecutionStatus = 'Running' OR CloseTime >= {_stamp(start - SLACK_NS)})"
        )
        for run in await temporal.list_runs(query, max_runs):
            changed += await _link_run(run)
    if pending.runless:
        changed += await _tie_runless(pending.runless)
    return changed


async def link_pending_quietly(max_runs: int = RUNS_PER_SWEEP) -> None:
    """link_pending for pages: Temporal down or a bad answer is not their error."""
    try:
        await link_pending(max_runs)
    except (temporal.TemporalUnavailable, ValueError) as exc:
        logger.debug("linker: %s", exc)


async def serve() -> None:
    """The background linker: a sweep a second, for the life of the process."""
    while True:
        try:
            await link_pending()
        except (temporal.TemporalUnavailable, ValueError) as exc:
            logger.debug("linker: %s", exc)
        except Exception:
            logger.exception("linker sweep failed")
        await asyncio.sleep(INTERVAL_SECONDS)

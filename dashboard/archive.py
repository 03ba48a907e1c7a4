"""Which closed runs get their history archived in the store (tracing/archive.py), and when.

Two paths, so no run depends on anyone opening its page:

- **The sweep** (the robust one): the background worker (``runforwarder``, see
  dashboard/maintenance.py) asks Temporal's visibility every
  ``LOOMVIEW_ARCHIVE_INTERVAL_SECONDS`` for runs closed since its watermark
  (kept in the database, minus an overlap for late spans and visibility's
  lag), and archives each one the store knows (it has a run summary, i.e.
  spans) and has not archived yet, and checks its trace health against the
  history once (so the runs list flags a run whose history shows what its
  spans cannot, e.g. model attempts no span covers, whoever opens its page).
  After a restart it catches up from its watermark; the first sweep looks back
  ``FIRST_LOOKBACK`` (or the retention).
- **The run page**: a closed history fetched for a page is archived on the spot.

The run page, the history views, ``history.json`` and actions read the archive
when Temporal no longer has the run (dashboard/run_page.py ``load_history``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings

from dashboard import run_page, temporal
from tracing import archive
from tracing.models import RunSummary

logger = logging.getLogger(__name__)

# Look again at runs closed this long before the watermark: their last spans
# (workflow-side spans arrive when the workflow completes) may come later than
# the close, and visibility is eventually consistent.
OVERLAP = timedelta(minutes=10)
FIRST_LOOKBACK = timedelta(days=30)


@dataclass
class SweepResult:
    closed: int = 0
    archived: int = 0
    watermark_ns: int = 0


def _stamp(moment: datetime) -> str:
    return temporal.quote(moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _known(keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    if not keys:
        return set()
    found = RunSummary.objects.filter(
        workflow_id__in={w for w, _ in keys}, run_id__in={r for _, r in keys}
    ).values_list("workflow_id", "run_id")
    return {k for k in found if k in keys} - archive.archived_keys(keys)


async def sweep(watermark_ns: int | None) -> SweepResult:
    """Archive the closed runs the store knows, closed since ``watermark_ns`` (minus OVERLAP).

    Raises temporal.TemporalUnavailable; the caller retries on its next round.
    """
    started = datetime.now(tz=UTC)
    if watermark_ns is None:
        days = int(getattr(settings, "LOOMVIEW_RETENTION_DAYS", 0) or 0)
        since = started - (timedelta(days=days) if days else FIRST_LOOKBACK)
    else:
        since = datetime.fromtimestamp(watermark_ns / 1e9, tz=UTC) - OVERLAP
    closed = await temporal.all_runs(f"CloseTime >= {_stamp(since)}")
    closed = [r for r in closed if r.close_time is not None]
    todo = await sync_to_async(_known)({(r.workflow_id, r.run_id) for r in closed})
    result = SweepResult(closed=len(closed), watermark_ns=int(started.timestamp() * 1e9))
    for workflow_id, run_id in sorted(todo):
        try:
            fetched = await temporal.fetch_history(workflow_id, run_id)
        except temporal.RunNotFound:
            continue
        if await sync_to_async(archive.save)(workflow_id, run_id, fetched.history):
            result.archived += 1
            # Its trace health, checked against the history once, for the runs list;
            # one run's failure must not stop the sweep (its page still checks it).
            try:
                await run_page.refresh_health(workflow_id, run_id)
            except Exception:
                logger.exception("trace health of %s/%s", workflow_id, run_id)
    if result.archived:
        logger.info("archived %d closed run histories", result.archived)
    return result


def enabled() -> bool:
    return bool(getattr(settings, "LOOMVIEW_ARCHIVE_HISTORIES", True))

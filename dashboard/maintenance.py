"""Background maintenance in the ``runforwarder`` worker: retention and the history archive.

``python manage.py runforwarder`` runs channels' worker on the forwarder's
channel and on ``loomview-maintenance``; this consumer runs two jobs there,
each on one process at a time however many forwarders run (a lease per job in
``tracing.Maintenance``, as collectors have in ``ExportCursor``), each when it
is due:

- ``retention`` (tracing/retention.py) every ``LOOMVIEW_RETENTION_INTERVAL_SECONDS``
  when ``LOOMVIEW_RETENTION_DAYS`` or ``LOOMVIEW_AUDIT_RETENTION_DAYS`` is set;
- ``archive`` (dashboard/archive.py) every ``LOOMVIEW_ARCHIVE_INTERVAL_SECONDS``
  unless ``LOOMVIEW_ARCHIVE_HISTORIES`` is off;

and the linker (dashboard/linker.py) every second and the search index
(tracing/search.py) every 2 s, in every forwarder process (ties and index rows
are idempotent).

What each last did shows on the Exports page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from channels.consumer import AsyncConsumer
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q
from django.utils import timezone

from dashboard import archive, linker, temporal
from tracing import retention, search
from tracing.forwarder import OWNER, lease_seconds
from tracing.models import Maintenance

logger = logging.getLogger(__name__)

MAINTENANCE_CHANNEL = "loomview-maintenance"
RETENTION = "retention"
ARCHIVE = "archive"


def interval(job: str) -> float:
    if job == RETENTION:
        return float(settings.LOOMVIEW_RETENTION_INTERVAL_SECONDS)
    return float(settings.LOOMVIEW_ARCHIVE_INTERVAL_SECONDS)


def claim(job: str, owner: str = OWNER, *, force: bool = False) -> bool:
    """Take this job's lease if it is due and nobody else runs it; False otherwise."""
    now = timezone.now()
    Maintenance.objects.get_or_create(job=job)
    free = Q(lease_owner=owner) | Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    due = Q(last_finished_at__isnull=True) | Q(
        last_finished_at__lte=now - timedelta(seconds=interval(job))
    )
    return bool(
        Maintenance.objects.filter(Q(job=job) & free & (Q() if force else due)).update(
            lease_owner=owner,
            lease_until=now + timedelta(seconds=lease_seconds()),
            last_started_at=now,
        )
    )


def renew(job: str, owner: str = OWNER) -> bool:
    now = timezone.now()
    return bool(
        Maintenance.objects.filter(job=job, lease_owner=owner).update(
            lease_until=now + timedelta(seconds=lease_seconds())
        )
    )


def finish(job: str, result: dict[str, int], owner: str = OWNER, **extra: Any) -> None:
    row = Maintenance.objects.get(job=job)
    totals = dict(row.totals or {})
    for key, value in result.items():
        totals[key] = int(totals.get(key, 0)) + int(value)
    Maintenance.objects.filter(job=job).update(
        last_finished_at=timezone.now(),
        last_result=result,
        totals=totals,
        last_error="",
        lease_owner="",
        lease_until=None,
        **extra,
    )


def fail(job: str, error: str, owner: str = OWNER) -> None:
    Maintenance.objects.filter(job=job, lease_owner=owner).update(
        last_error=error[:2000], lease_owner="", lease_until=None
    )


def retention_enabled() -> bool:
    return bool(retention.days() or retention.days("LOOMVIEW_AUDIT_RETENTION_DAYS"))


def run_retention(owner: str = OWNER, *, force: bool = False) -> retention.PruneResult | None:
    """One retention round if it is due and this process gets the lease; None otherwise."""
    if not claim(RETENTION, owner, force=force):
        return None
    renewed = [time.monotonic()]

    def lost_lease() -> bool:
        if time.monotonic() - renewed[0] < lease_seconds() / 3:
            return False
        renewed[0] = time.monotonic()
        return not renew(RETENTION, owner)

    try:
        result = retention.prune(should_stop=lost_lease)
    except DatabaseError as exc:
        fail(RETENTION, str(exc), owner)
        raise
    finish(RETENTION, dict(result.deleted), owner)
    return result


async def run_archive(owner: str = OWNER, *, force: bool = False) -> archive.SweepResult | None:
    if not await sync_to_async(claim)(ARCHIVE, owner, force=force):
        return None
    row = await Maintenance.objects.aget(job=ARCHIVE)
    try:
        result = await archive.sweep(row.watermark_ns)
    except (temporal.TemporalUnavailable, ValueError, DatabaseError) as exc:
        await sync_to_async(fail)(ARCHIVE, str(exc), owner)
        raise
    await sync_to_async(finish)(
        ARCHIVE, {"histories": result.archived}, owner, watermark_ns=result.watermark_ns
    )
    return result


def status() -> dict[str, Maintenance]:
    return {m.job: m for m in Maintenance.objects.all()}


class MaintenanceConsumer(AsyncConsumer):
    """Runs the maintenance jobs for the life of the worker (started like the forwarder)."""

    tasks: list[asyncio.Task[None]] | None = None

    async def forwarder_start(self, message: dict[str, Any]) -> None:
        if self.tasks is not None:
            return
        self.tasks = []
        if retention_enabled():
            self.tasks.append(asyncio.create_task(self._every(RETENTION, self._retention)))
        if archive.enabled():
            self.tasks.append(asyncio.create_task(self._every(ARCHIVE, run_archive)))
        # Ties spans without Temporal ids to their runs through the runs' histories.
        self.tasks.append(asyncio.create_task(linker.serve()))
        # Indexes new spans for the runs list's search, behind the receiver.
        self.tasks.append(asyncio.create_task(search.serve()))

    async def forwarder_wake(self, message: dict[str, Any]) -> None:
        await self.forwarder_start(message)

    @staticmethod
    async def _retention() -> Any:
        return await sync_to_async(run_retention, thread_sensitive=False)()

    async def _every(self, job: str, run: Callable[[], Awaitable[Any]]) -> None:
        while True:
            try:
                await run()
            except temporal.TemporalUnavailable as exc:
                logger.info("%s: Temporal unavailable (%s); next round later", job, exc.reason)
            except Exception:
                logger.exception("%s round failed", job)
            # Come back often enough to notice when the job falls due.
            await asyncio.sleep(min(interval(job), 30.0))

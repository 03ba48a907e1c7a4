"""The store and the forwarder's leases under real concurrency, on this pass's backend.

`make test` runs this module twice: on SQLite with the in-memory channel layer,
then on real PostgreSQL + Redis servers (tests/servers.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.db import connection
from django.utils import timezone
from opentelemetry.trace import Tracer

from tests import servers
from tests.tracing.spans import agent_run, protobuf_body, record
from tracing import forwarder, otlp, store
from tracing.exporters import Exporter
from tracing.models import ExportCursor, RunSummary, Span

pytestmark = pytest.mark.django_db(transaction=True)

WRITERS = 6
CALLS_PER_WRITER = 8


def test_this_pass_runs_on_the_backends_it_says() -> None:
    layer = get_channel_layer()
    if os.environ.get(servers.POSTGRES_URL_ENV):
        assert connection.vendor == "postgresql"
        assert isinstance(layer, RedisChannelLayer)
    else:
        assert connection.vendor == "sqlite"
        assert isinstance(layer, InMemoryChannelLayer)


def _in_thread(work: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        try:
            return work()
        finally:
            connection.close()

    return run


def _batches() -> list[list[list[dict[str, Any]]]]:
    """One list of small batches per writer: model calls of one run, one trace each."""
    per_writer = []
    for writer in range(WRITERS):

        def build(tracer: Tracer, writer: int = writer) -> None:
            for call in range(CALLS_PER_WRITER):
                agent_run(tracer, activity_id=f"{writer}-{call}", failed_attempts=call % 2)

        rows = otlp.decode(protobuf_body(record(build)), otlp.PROTOBUF).rows
        per_writer.append([rows[i : i + 5] for i in range(0, len(rows), 5)])
    return per_writer


def test_concurrent_writers_count_every_span_once_and_ids_appear_in_order() -> None:
    """Writers race on one run (and re-send each other's batches); a reader that
    follows ids above a cursor, as the forwarder does, must never skip one."""
    per_writer = _batches()
    expected = sum(len(batch) for batches in per_writer for batch in batches)
    done = threading.Event()
    seen: list[int] = []

    def write(writer: int) -> None:
        mine, theirs = per_writer[writer], per_writer[(writer + 1) % WRITERS]
        for batch, resent in zip(mine, theirs, strict=False):
            store.ingest([dict(r) for r in batch])
            store.ingest([dict(r) for r in resent])

    def follow() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            # The SQLite test database is in memory with a shared cache, where
            # a reader meets the writers' table lock (the WAL file Loomview runs
            # on lets readers through), so there the reader queues with them.
            with store._sqlite_writer if connection.vendor == "sqlite" else nullcontext():
                rows = forwarder.read_after(cursor, 10_000)
            seen.extend(r["id"] for r in rows)
            cursor = max([cursor, *(r["id"] for r in rows)])
            if finished and not rows:
                return

    with ThreadPoolExecutor(WRITERS + 1) as pool:
        reader = pool.submit(_in_thread(follow))
        writers = [pool.submit(_in_thread(lambda w=w: write(w))) for w in range(WRITERS)]  # type: ignore[misc]
        try:
            for future in writers:
                future.result()
        finally:
            done.set()
        reader.result()

    stored = list(Span.objects.order_by("id").values_list("id", flat=True))
    assert len(stored) == expected
    # Every id the reader passed was there when it passed it: none appeared later below it.
    assert seen == stored
    summary = RunSummary.objects.get(workflow_id="wf-1", run_id="run-1")
    assert summary.span_count == expected
    assert summary.model_calls == WRITERS * CALLS_PER_WRITER
    failed = WRITERS * (CALLS_PER_WRITER // 2)
    assert (summary.attempts, summary.failed_attempts) == (
        WRITERS * CALLS_PER_WRITER + failed,
        failed,
    )
    assert summary.tokens_in == 100 * summary.attempts


def test_one_lease_holder_among_racing_forwarders() -> None:
    exporter = Exporter(name="raced", endpoint="http://127.0.0.1:9/v1/traces")
    owners = [forwarder.CollectorState(exporter, owner=f"forwarder-{i}") for i in range(6)]

    def race() -> set[str]:
        barrier = threading.Barrier(len(owners))

        def attempt(state: forwarder.CollectorState) -> bool:
            barrier.wait()
            return forwarder.claim(state)

        with ThreadPoolExecutor(len(owners)) as pool:
            won = list(pool.map(lambda s: _in_thread(lambda: attempt(s))(), owners))
        return {s.owner for s, w in zip(owners, won, strict=True) if w}

    first = race()
    assert len(first) == 1
    # Nobody else gets it while the lease runs, whatever the race.
    assert race() == first
    ExportCursor.objects.filter(collector="raced").update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    assert len(race()) == 1
    assert ExportCursor.objects.filter(collector="raced").count() == 1

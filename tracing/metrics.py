"""Prometheus metrics: what the receiver counts, and what the database knows at scrape time.

Two kinds, because several dashboard processes may run:

- events seen by one process (spans received, stored and rejected; ingest
  latency) are prometheus-client counters and a histogram in that process;
  with ``PROMETHEUS_MULTIPROC_DIR`` set (before the processes start) the
  processes of one host share them through files, as prometheus-client's
  multiprocess mode does; otherwise scrape each process;
- the state of the store (runs by status, model calls, attempts, failures
  and tokens by model, forwarder pending and lag per collector) is read from
  the database on each scrape, from the rollups and the export cursors, so
  any process gives the same, whole answer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

SPANS_RECEIVED = Counter(
    "loomview_spans_received", "Spans in OTLP requests that decoded (stored, duplicate or rejected)"
)
SPANS_STORED = Counter("loomview_spans_stored", "Spans stored (new; duplicates are not counted)")
SPANS_DUPLICATE = Counter("loomview_spans_duplicate", "Spans received again and skipped")
SPANS_REJECTED = Counter(
    "loomview_spans_rejected", "Spans refused one by one (reported in partial_success)"
)
REQUESTS_REJECTED = Counter(
    "loomview_otlp_requests_rejected", "OTLP requests refused whole", ["code"]
)
INGEST_SECONDS = Histogram(
    "loomview_ingest_seconds",
    "Time to store one OTLP request's spans (decode excluded)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def record_ingest(
    received: int, stored: int, duplicates: int, rejected: int, seconds: float
) -> None:
    SPANS_RECEIVED.inc(received)
    SPANS_STORED.inc(stored)
    SPANS_DUPLICATE.inc(duplicates)
    SPANS_REJECTED.inc(rejected)
    INGEST_SECONDS.observe(seconds)


def record_refused(code: int) -> None:
    REQUESTS_REJECTED.labels(code=str(code)).inc()


class StoreCollector(Collector):
    """Gauges read from the database at scrape time."""

    def collect(self) -> Iterator[Any]:
        from django.db.models import Count, Sum

        from tracing import exporters, forwarder, rollups
        from tracing.models import Rollup, RunRollupState

        runs = GaugeMetricFamily(
            "loomview_runs", "Runs with spans, by Temporal status as last seen", labels=["status"]
        )
        by_status = RunRollupState.objects.values_list("status").annotate(n=Count("id"))
        for status, count in by_status.order_by("status"):
            runs.add_metric([status or rollups.UNKNOWN_STATUS], count)
        yield runs

        names = ("calls", "attempts", "failed_attempts", "tokens_in", "tokens_out",
                 "failed_tokens_in", "failed_tokens_out")  # fmt: skip
        families = {
            "calls": GaugeMetricFamily(
                "loomview_model_calls",
                "Model calls (invoke_model_activity) stored",
                labels=["model"],
            ),
            "attempts": GaugeMetricFamily(
                "loomview_model_attempts", "Model-call attempts stored", labels=["model"]
            ),
            "failed_attempts": GaugeMetricFamily(
                "loomview_model_attempts_failed", "Failed model-call attempts", labels=["model"]
            ),
            "tokens": GaugeMetricFamily(
                "loomview_tokens", "Tokens of model calls", labels=["model", "direction"]
            ),
            "failed_tokens": GaugeMetricFamily(
                "loomview_tokens_failed_attempts",
                "Tokens of failed model-call attempts",
                labels=["model", "direction"],
            ),
        }
        sums = (
            Rollup.objects.filter(width_ns=rollups.DAY_NS)
            .exclude(agent=rollups.ANY)
            .exclude(model=rollups.ANY)
            .values_list("model")
            .annotate(*[Sum(n) for n in names])
            .order_by("model")
        )
        for model, calls, attempts, failed, tin, tout, ftin, ftout in sums:
            families["calls"].add_metric([model], calls)
            families["attempts"].add_metric([model], attempts)
            families["failed_attempts"].add_metric([model], failed)
            families["tokens"].add_metric([model, "in"], tin)
            families["tokens"].add_metric([model, "out"], tout)
            families["failed_tokens"].add_metric([model, "in"], ftin)
            families["failed_tokens"].add_metric([model, "out"], ftout)
        yield from families.values()

        pending = GaugeMetricFamily(
            "loomview_forwarder_pending_spans",
            "Spans not yet sent to a collector",
            labels=["collector"],
        )
        lag = GaugeMetricFamily(
            "loomview_forwarder_lag_seconds",
            "Age of the oldest span not yet sent to a collector",
            labels=["collector"],
        )
        delivered = GaugeMetricFamily(
            "loomview_forwarder_delivered_spans",
            "Spans delivered to a collector",
            labels=["collector"],
        )
        for exporter in exporters.configured():
            stats = forwarder.stats(exporter)
            pending.add_metric([exporter.name], stats.pending)
            lag.add_metric([exporter.name], stats.lag_seconds or 0.0)
            delivered.add_metric([exporter.name], stats.delivered)
        yield pending
        yield lag
        yield delivered


def exposition() -> bytes:
    """The text format for a scrape: this process's (or this host's) counters and the store."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    return generate_latest(registry) + generate_latest(_store_registry())


def _store_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StoreCollector())
    return registry

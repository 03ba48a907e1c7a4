"""Trace health: every problem kind, counted at ingest and on the run page, flagged in
the runs list, in the run API.

The broken app is a real OpenTelemetry SDK app: it builds spans with the SDK's own
span type and sends them with the real OTLP/HTTP exporter to the live receiver.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags
from temporalio.api.history.v1 import History

from dashboard import run_page, temporal
from dashboard.run_health import Facts
from tests.dashboard.run_fixtures import history_proto, recorded, store_spans
from tracing import health
from tracing.models import MissingParent, RunSummary

RESOURCE = Resource.create({"service.name": "broken-app"})
S = 1_000_000_000


def context(trace_id: int, span_id: int) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1))


def span(
    name: str,
    trace_id: int,
    span_id: int,
    parent: int | None,
    run: tuple[str, str] | None,
    start: int,
    end: int | None = None,
) -> ReadableSpan:
    """A span as the SDK hands it to exporters, with the ids and parent we choose."""
    attributes: dict[str, Any] = {}
    if run is not None:
        attributes = {"temporal.workflow.id": run[0], "temporal.run.id": run[1]}
    return ReadableSpan(
        name=name,
        context=context(trace_id, span_id),
        parent=context(trace_id, parent) if parent is not None else None,
        resource=RESOURCE,
        attributes=attributes,
        start_time=start,
        end_time=end if end is not None else start + S // 10,
    )


@pytest.fixture
def exporter(live_server: Any) -> Iterator[OTLPSpanExporter]:
    """The real OTLP/HTTP exporter, pointed at the live receiver."""
    sender = OTLPSpanExporter(endpoint=f"{live_server.url}/v1/traces", timeout=10)
    yield sender
    sender.shutdown()


def send(exporter: OTLPSpanExporter, *spans: ReadableSpan) -> None:
    assert exporter.export(list(spans)) == SpanExportResult.SUCCESS


@pytest.fixture
def viewer(client: Client, closed_temporal_address: str) -> Client:
    cache.clear()
    client.force_login(User.objects.create_user("ada", password="x"))
    return client


@pytest.mark.django_db(transaction=True)
def test_a_broken_app_is_flagged_for_each_problem(
    exporter: OTLPSpanExporter, viewer: Client
) -> None:
    broken, healthy = ("broken-app", "run-broken"), ("healthy-app", "run-healthy")
    now = time.time_ns()
    trace, other = 0xB0B, 0xC0C
    # Batch 1: the root (the run has closed), an orphan (its parent was never
    # sent), a cycle within the batch, a span that will come again changed, and a
    # span of no run waiting for an ancestor that never comes.
    send(
        exporter,
        span("RunWorkflow:broken", trace, 0x1, None, broken, now - 2 * S, now),
        span("orphan tool", trace, 0x2, 0xDEAD, broken, now - S),
        span("loop a", trace, 0x3, 0x4, broken, now - S),
        span("loop b", trace, 0x4, 0x3, broken, now - S),
        span("tool call", trace, 0x5, 0x1, broken, now - S),
        span("untied child", trace, 0x6, 0xBEEF, None, now - S),
        span("RunWorkflow:healthy", other, 0x1, None, healthy, now - S, now),
    )
    # Batch 2: the same span id with other content (a duplicate); then an exact
    # re-delivery (an exporter's retry: not a problem).
    send(exporter, span("tool call, again", trace, 0x5, 0x1, broken, now - S // 2))
    send(exporter, span("tool call", trace, 0x5, 0x1, broken, now - S))
    # Batches 3 and 4: a cycle closed through a span stored earlier.
    send(exporter, span("ring a", trace, 0x7, 0x8, broken, now - S))
    send(exporter, span("ring b", trace, 0x8, 0x7, broken, now - S))

    summary = RunSummary.objects.get(workflow_id=broken[0], run_id=broken[1])
    assert (summary.orphan_spans, summary.cycle_spans, summary.duplicate_spans) == (1, 4, 1)
    assert summary.late_spans == 0 and summary.closed_ns == now
    assert summary.health_problems == 6
    assert RunSummary.objects.get(workflow_id=healthy[0]).health_problems == 0
    # The orphan's parent and the untied span's are still missing; the ring's arrived.
    assert sorted(MissingParent.objects.values_list("span_id", flat=True)) == [
        f"{0x2:016x}",
        f"{0x6:016x}",
    ]

    # The run API: every count, from the run's spans and what the store kept.
    story = viewer.get(f"/api/runs/{broken[0]}/{broken[1]}/").json()
    problems = story["health"]["problems"]
    assert {k: v for k, v in problems.items() if v} == {
        "orphans": 1,
        "cycles": 4,
        "duplicates": 1,
        "waiting": 1,
    }
    assert story["health"]["ok"] is False and story["health"]["history_checked"] is False
    assert story["health"]["spans_tied"] == 7
    assert story["health"]["spans_stored"] == 8  # the untied span is in the run's trace
    assert story["health"]["examples"]["orphans"] == [f"{0x2:016x}"]
    healthy_story = viewer.get(f"/api/runs/{healthy[0]}/{healthy[1]}/").json()
    assert healthy_story["health"]["ok"] is True

    # The run page: a compact panel that says what each problem means and how to fix it.
    page = viewer.get(f"/runs/{broken[0]}/{broken[1]}/").content.decode()
    assert 'data-health="problems"' in page
    for key in ("orphans", "cycles", "duplicates", "waiting"):
        assert f'data-problem="{key}"' in page
    assert "How to fix it." in page and "Mix the run id into generated ids" in page

    # The runs list flags the run and filters on it, from the summaries alone.
    rows = viewer.get("/api/runs/").json()["runs"]
    flags = {r["workflow_id"]: r["health_problems"] for r in rows}
    assert flags[broken[0]] >= 6 and flags[healthy[0]] == 0
    only = viewer.get("/api/runs/", {"health": "problems"}).json()["runs"]
    assert [r["workflow_id"] for r in only] == [broken[0]]
    listing = viewer.get("/", {"health": "problems"}).content.decode()
    assert 'data-health-problems="' in listing and healthy[0] not in listing


@pytest.mark.django_db(transaction=True)
def test_spans_that_arrive_after_the_run_closed_are_late(
    exporter: OTLPSpanExporter, viewer: Client
) -> None:
    run = ("late-app", "run-late")
    closed = time.time_ns() - 3600 * S
    send(exporter, span("RunWorkflow:late", 0xA, 0x1, None, run, closed - S, closed))
    # An hour after the close, two spans of the run arrive.
    send(
        exporter,
        span("a held-back span", 0xA, 0x2, 0x1, run, closed - S // 2),
        span("another", 0xA, 0x3, 0x1, run, closed - S // 2),
    )
    summary = RunSummary.objects.get(workflow_id=run[0], run_id=run[1])
    assert summary.late_spans == 2 and summary.health_problems == 2
    story = viewer.get(f"/api/runs/{run[0]}/{run[1]}/").json()
    assert story["health"]["problems"]["late"] == 2


# -- what only the history shows ----------------------------------------------------


def _rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for stored in copy.deepcopy(run["spans"]):
        data = stored.pop("data") or {}
        rows.append({**stored, **{k: data.get(k, d) for k, d in _DATA_DEFAULTS.items()}})
    return rows


_DATA_DEFAULTS: dict[str, Any] = {
    "attributes": {},
    "resource": {},
    "events": [],
    "links": [],
    "scope": "",
}


def test_attempts_without_a_span_and_spans_without_an_event() -> None:
    """The recorded triage run (model call 1 failed twice): attempt 2's spans are lost,
    and a stray model span names an activity the history does not have."""
    run = recorded()
    spans = [s for s in _rows(run) if not (s["activity_id"] == "1" and s["attempt"] == 2)]
    stray = copy.deepcopy(next(s for s in spans if s["kind"] == "generation"))
    stray.update(span_id="00000000000000ff", activity_id="99", attempt=1)
    spans.append(stray)
    loaded = run_page.Loaded(history_proto(run), None, spans, stored="1", health=Facts())
    ctx = run_page.build(run["workflow_id"], run["run_id"], loaded)
    report = ctx["health"].report
    assert report.history_checked
    assert report.counts["attempts_without_span"] == 1
    assert report.counts["spans_without_event"] == 1
    assert report.examples["spans_without_event"] == ["00000000000000ff"]
    # The timeline still draws the attempt, marked: no span, time estimated between
    # attempt 1's end and attempt 3's start (Temporal keeps only the last start).
    bars = {(a["c"], a["n"]): a for a in ctx["timeline"]["attempts"]}
    lost = bars[(0, 2)]
    assert lost["u"] == 1 and lost["est"] == 1 and lost["f"] is True
    assert bars[(0, 1)]["e"] <= lost["s"] < lost["e"] <= bars[(0, 3)]["s"]
    assert "u" not in bars[(0, 1)] and "u" not in bars[(0, 3)]
    assert ctx["timeline"]["no_span"] == 1


def test_a_stopped_runs_spans_under_spans_it_never_ended_are_not_orphans() -> None:
    """A terminated (or timed-out) run's workflow never ends the spans it had open, its
    RunWorkflow span first: their children are not an instrumentation fault."""
    rows = [
        {"trace_id": "t", "span_id": "a", "parent_span_id": "root-never-ended"},
        {"trace_id": "t", "span_id": "b", "parent_span_id": "a"},
        {"trace_id": "t", "span_id": "c", "parent_span_id": "root-never-ended"},
    ]
    facts = health.StoreFacts(spans_stored=3)
    finished = health.report(rows, None, facts, None)
    assert finished.counts["orphans"] == 2 and not finished.ok
    stopped = health.report(rows, None, facts, None, stopped=True)
    assert stopped.counts["orphans"] == 0 and stopped.ok
    assert stopped.unended_parents == 2
    assert stopped.as_json()["under_unended_parents"] == 2


@pytest.mark.django_db
def test_the_page_keeps_what_the_history_showed_for_the_runs_list(
    logged_in_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.clear()
    run = recorded()
    run["spans"] = [s for s in run["spans"] if not (s["activity_id"] == "1" and s["attempt"] == 2)]
    store_spans(run)
    RunSummary.objects.create(
        workflow_id=run["workflow_id"], run_id=run["run_id"], first_span_ns=1, last_span_ns=2
    )

    async def fetch(workflow_id: str, run_id: str) -> temporal.RunHistory:
        return temporal.RunHistory(workflow_id, run_id, History(events=history_proto(run).events))

    monkeypatch.setattr(temporal, "fetch_history", fetch)
    page = logged_in_client.get(f"/runs/{run['workflow_id']}/{run['run_id']}/").content.decode()
    assert 'data-problem="attempts_without_span"' in page
    summary = RunSummary.objects.get(workflow_id=run["workflow_id"], run_id=run["run_id"])
    assert summary.history_health == {
        "attempts_without_span": 1,
        "spans_without_event": 0,
        "waiting": 0,
    }
    assert summary.health_problems == health.problems_of(summary) >= 1
    assert summary.closed_ns is not None  # from the history's close event


@pytest.mark.django_db(transaction=True)
def test_the_archive_sweep_flags_what_the_history_shows_without_a_page_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A closed run nobody opens: the background sweep that archives its history
    also checks its health against it, so the runs list flags the run."""
    from datetime import UTC, datetime

    from asgiref.sync import async_to_sync

    from dashboard import maintenance
    from tracing.models import ArchivedHistory

    cache.clear()
    run = recorded()
    run["spans"] = [s for s in run["spans"] if not (s["activity_id"] == "1" and s["attempt"] == 2)]
    store_spans(run)
    key = (run["workflow_id"], run["run_id"])
    RunSummary.objects.update_or_create(
        workflow_id=key[0], run_id=key[1], defaults={"first_span_ns": 1, "last_span_ns": 2}
    )
    assert RunSummary.objects.get(workflow_id=key[0], run_id=key[1]).history_health is None
    now = datetime.now(tz=UTC)

    async def all_runs(query: str, page_size: int = 1000) -> list[temporal.VisibilityRun]:
        return [temporal.VisibilityRun(*key, "triage", "COMPLETED", now, now)]

    async def fetch(workflow_id: str, run_id: str) -> temporal.RunHistory:
        return temporal.RunHistory(workflow_id, run_id, History(events=history_proto(run).events))

    monkeypatch.setattr(temporal, "all_runs", all_runs)
    monkeypatch.setattr(temporal, "fetch_history", fetch)
    swept = async_to_sync(maintenance.run_archive)(force=True)
    assert swept is not None and swept.archived == 1
    assert ArchivedHistory.objects.filter(workflow_id=key[0], run_id=key[1]).exists()
    summary = RunSummary.objects.get(workflow_id=key[0], run_id=key[1])
    assert summary.history_health == {
        "attempts_without_span": 1,
        "spans_without_event": 0,
        "waiting": 0,
    }
    assert summary.health_problems >= 1 and summary.closed_ns is not None
    assert health.flagged({key}) == {key: summary.health_problems}


@pytest.mark.django_db
def test_the_page_never_says_no_spans_when_the_workflow_has_spans_elsewhere(
    logged_in_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temporal knows the run; its workflow's spans are stored under another run id."""
    cache.clear()
    run = recorded()
    moved = copy.deepcopy(run)
    for stored in moved["spans"]:
        stored["run_id"] = "another-run"
    store_spans(moved)

    async def fetch(workflow_id: str, run_id: str) -> temporal.RunHistory:
        return temporal.RunHistory(workflow_id, run_id, History(events=history_proto(run).events))

    monkeypatch.setattr(temporal, "fetch_history", fetch)
    page = logged_in_client.get(f"/runs/{run['workflow_id']}/{run['run_id']}/").content.decode()
    assert "No spans stored for this run" not in page
    assert 'data-health="elsewhere"' in page
    assert f"{len(run['spans'])} under other runs of the workflow id" in page
    story = logged_in_client.get(f"/api/runs/{run['workflow_id']}/{run['run_id']}/").json()
    assert story["health"]["spans_elsewhere"] == {"other_runs": len(run["spans"])}
    # The history's model attempts, with no span tied to the run, are counted too.
    assert story["health"]["problems"]["attempts_without_span"] >= 6


@pytest.mark.django_db(transaction=True)
def test_an_orphan_tied_to_its_run_later_counts_for_that_run(
    exporter: OTLPSpanExporter, viewer: Client
) -> None:
    """A client's span names the workflow but no run (its parent was never sent); when a
    span of the same trace names the run, the orphan becomes that run's."""
    now = time.time_ns()
    client_span = span("SignalWorkflow:approve", 0xE, 0x1, 0xDEAD, None, now - S)
    assert client_span.attributes is not None
    client_span = ReadableSpan(
        name=client_span.name,
        context=client_span.context,
        parent=client_span.parent,
        resource=RESOURCE,
        attributes={"temporal.workflow.id": "tied-later"},
        start_time=now - S,
        end_time=now - S // 2,
    )
    send(exporter, client_span)
    assert MissingParent.objects.get().run_id == ""
    send(exporter, span("RunWorkflow:tied", 0xE, 0x2, None, ("tied-later", "run-t"), now - S, now))
    assert MissingParent.objects.get().run_id == "run-t"
    summary = RunSummary.objects.get(workflow_id="tied-later", run_id="run-t")
    assert summary.orphan_spans == 1 and summary.health_problems == 1

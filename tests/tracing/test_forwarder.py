"""Continuous forwarding, in process: stored spans → real OTLP/gRPC and OTLP/HTTP receivers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from django.utils import timezone
from opentelemetry.trace import Link, Tracer

from tests.tracing.collector import CollectedSpan, Collector, running_collector
from tests.tracing.grpc_collector import GrpcCollector, running_grpc_collector
from tests.tracing.spans import agent_run, protobuf_body, record
from tracing import forwarder, otlp, store
from tracing.exporters import GRPC, HTTP_JSON, HTTP_PROTOBUF, Exporter
from tracing.models import ExportCursor, Span

pytestmark = pytest.mark.django_db


@pytest.fixture
def grpc_collector() -> Iterator[GrpcCollector]:
    with running_grpc_collector() as collector:
        yield collector


@pytest.fixture
def http_collector() -> Iterator[Collector]:
    with running_collector() as collector:
        yield collector


def ingest(build: Any, service: str = "test-worker") -> list[dict[str, Any]]:
    rows = otlp.decode(protobuf_body(record(build, service)), otlp.PROTOBUF).rows
    store.ingest(rows)
    return rows


def with_links_and_events(tracer: Tracer) -> None:
    agent_run(tracer)
    with tracer.start_as_current_span(
        "HandleSignal:approve",
        attributes={"temporal.workflow.id": "wf-1", "temporal.run.id": "run-1", "n": 3.5},
    ) as first:
        first.add_event("decided", {"by": "oncall", "tags": ["a", "b"]})
    with tracer.start_as_current_span(
        "followup", links=[Link(first.get_span_context(), {"why": "same approval"})]
    ):
        pass


def drain(*states: forwarder.CollectorState, rounds: int = 20) -> None:
    for _ in range(rounds):
        for state in states:
            forwarder.step(state)
        if all(forwarder.stats(s.exporter).pending == 0 for s in states):
            return
    raise AssertionError("the forwarder never caught up")


def stored_by_id() -> dict[tuple[str, str], dict[str, Any]]:
    return {(s.trace_id, s.span_id): store.span_row(s) for s in Span.objects.all()}


def assert_same_spans(collected: list[CollectedSpan]) -> None:
    stored = stored_by_id()
    assert len(collected) == len(stored)
    assert {(c.trace_id, c.span_id) for c in collected} == set(stored)
    for span in collected:
        row = stored[(span.trace_id, span.span_id)]
        assert span.parent_span_id == row["parent_span_id"]
        assert (span.name, span.span_kind) == (row["name"], row["span_kind"])
        assert (span.start_ns, span.end_ns) == (row["start_ns"], row["end_ns"])
        assert (span.status_code, span.status_message) == (
            row["status_code"],
            row["status_message"],
        )
        # Everything the span was sent with, plus the ids it inherited.
        assert row["attributes"].items() <= span.attributes.items()
        assert span.scope == row["scope"] and span.service_name == "test-worker"
        assert len(span.events) == len(row["events"]) and len(span.links) == len(row["links"])


@pytest.mark.parametrize("protocol", [GRPC, HTTP_PROTOBUF, HTTP_JSON])
def test_every_span_arrives_with_its_ids_and_attributes(
    protocol: str, grpc_collector: GrpcCollector, http_collector: Collector
) -> None:
    ingest(with_links_and_events)
    collector: Collector = grpc_collector if protocol == GRPC else http_collector
    exporter = Exporter(
        name="c", endpoint=collector.url, protocol=protocol, headers={"x-team": "s3cr3t"}
    )
    drain(forwarder.CollectorState(exporter))
    assert_same_spans(collector.spans)
    signal = next(s for s in collector.spans if s.name == "HandleSignal:approve")
    assert signal.events == (
        ("decided", signal.events[0][1], "[('by', 'oncall'), ('tags', ['a', 'b'])]"),
    )
    followup = next(s for s in collector.spans if s.name == "followup")
    assert followup.links == ((signal.trace_id, signal.span_id, "[('why', 'same approval')]"),)
    sent = grpc_collector.metadata if protocol == GRPC else http_collector.headers
    assert all(h.get("x-team") == "s3cr3t" for h in sent)
    cursor = ExportCursor.objects.get(collector="c")
    assert cursor.delivered == Span.objects.count() and cursor.rejected == 0


def test_inherited_spans_carry_the_temporal_ids(grpc_collector: GrpcCollector) -> None:
    ingest(lambda t: agent_run(t, failed_attempts=1))
    drain(forwarder.CollectorState(Exporter(name="c", endpoint=grpc_collector.url, protocol=GRPC)))
    llm = [s for s in grpc_collector.spans if s.name == "ChatCompletion"]
    assert len(llm) == 2
    for span in llm:
        assert span.attributes["temporal.workflow.id"] == "wf-1"
        assert span.attributes["temporal.run.id"] == "run-1"
        assert span.attributes["temporal.activity.id"] == "1"
        assert span.attributes["openinference.span.kind"] == "LLM"
    assert sorted(s.attributes["temporal.activity.attempt"] for s in llm) == [1, 2]
    # Spans that carry the ids in the other spelling are not given a second copy.
    root = next(s for s in grpc_collector.spans if s.name.startswith("RunWorkflow"))
    assert "temporal.workflow.id" not in root.attributes


def test_secrets_are_redacted_on_the_way_out(grpc_collector: GrpcCollector) -> None:
    key = "sk-proj-" + "Qx7" * 12

    def build(tracer: Tracer) -> None:
        attrs = {"temporal.workflow.id": "wf", "api_key": "plain", "input.value": f"use {key}"}
        with tracer.start_as_current_span("call", attributes=attrs):
            pass

    ingest(build)
    drain(forwarder.CollectorState(Exporter(name="c", endpoint=grpc_collector.url, protocol=GRPC)))
    (span,) = grpc_collector.spans
    assert span.attributes["api_key"] == "[REDACTED]"
    assert span.attributes["input.value"] == "use [REDACTED]"


def test_a_rejecting_collector_does_not_stop_the_others(
    grpc_collector: GrpcCollector, http_collector: Collector
) -> None:
    http_collector.status = 400
    ingest(agent_run)
    total = Span.objects.count()
    rejecting = forwarder.CollectorState(Exporter(name="bad", endpoint=http_collector.url))
    healthy = forwarder.CollectorState(
        Exporter(name="good", endpoint=grpc_collector.url, protocol=GRPC)
    )
    drain(rejecting, healthy)
    bad = ExportCursor.objects.get(collector="bad")
    assert bad.rejected == total and bad.delivered == 0 and bad.failures == 0
    assert "HTTP 400" in bad.last_error
    assert len(grpc_collector.spans) == total
    # Rejected spans are not retried: nothing more is sent to that collector.
    requests = len(http_collector.headers)
    forwarder.step(rejecting)
    assert len(http_collector.headers) == requests


def test_503_waits_as_long_as_retry_after_says(http_collector: Collector) -> None:
    http_collector.status, http_collector.retry_after = 503, "7"
    ingest(agent_run)
    state = forwarder.CollectorState(Exporter(name="c", endpoint=http_collector.url))
    forwarder.step(state)
    cursor = ExportCursor.objects.get(collector="c")
    assert cursor.last_span_id == 0 and cursor.failures == 1 and "HTTP 503" in cursor.last_error
    assert cursor.retry_at is not None
    wait = (cursor.retry_at - timezone.now()).total_seconds()
    assert 6 < wait <= 7
    assert forwarder.stats(state.exporter).state == "retrying"
    # Until then, nothing is sent.
    forwarder.step(state)
    assert len(http_collector.headers) == 1
    http_collector.status = None
    ExportCursor.objects.update(retry_at=timezone.now() - timedelta(seconds=1))
    drain(state)
    assert len(http_collector.spans) == Span.objects.count()
    assert ExportCursor.objects.get(collector="c").failures == 0


def test_the_lease_is_renewed_while_a_long_retry_waits(
    http_collector: Collector, settings: Any
) -> None:
    settings.LOOMVIEW_FORWARDER_LEASE_SECONDS = 2
    http_collector.status, http_collector.retry_after = 503, "600"
    ingest(agent_run)
    state = forwarder.CollectorState(Exporter(name="c", endpoint=http_collector.url))
    other = forwarder.CollectorState(state.exporter, owner="another-forwarder")
    wait = forwarder.step(state)
    assert 0 < wait <= 2 / 3
    # The holder keeps stepping at the pace it asks for, for twice the lease:
    # it stays the forwarder, nobody takes over, and nothing is re-sent early.
    deadline = time.monotonic() + 2 * 2
    while time.monotonic() < deadline:
        time.sleep(wait)
        wait = forwarder.step(state)
        assert 0 < wait <= 2 / 3
        assert not forwarder.claim(other)
        stats = forwarder.stats(state.exporter)
        assert stats.running and stats.state == "retrying" and stats.forwarder == state.owner
    assert len(http_collector.headers) == 1
    cursor = ExportCursor.objects.get(collector="c")
    assert cursor.retry_at is not None
    assert (cursor.retry_at - timezone.now()).total_seconds() > 500


def test_grpc_retry_info_and_permanent_codes(grpc_collector: GrpcCollector) -> None:
    ingest(agent_run)
    state = forwarder.CollectorState(Exporter(name="c", endpoint=grpc_collector.url, protocol=GRPC))
    grpc_collector.fail_with, grpc_collector.retry_delay = grpc.StatusCode.UNAVAILABLE, 9
    forwarder.step(state)
    cursor = ExportCursor.objects.get(collector="c")
    assert cursor.retry_at is not None and "UNAVAILABLE" in cursor.last_error
    assert 8 < (cursor.retry_at - timezone.now()).total_seconds() <= 9
    grpc_collector.fail_with, grpc_collector.retry_delay = grpc.StatusCode.PERMISSION_DENIED, None
    ExportCursor.objects.update(retry_at=None)
    forwarder.step(state)
    cursor = ExportCursor.objects.get(collector="c")
    assert cursor.rejected == Span.objects.count() and "PERMISSION_DENIED" in cursor.last_error


def test_a_filtered_collector_gets_only_its_workflow_types(grpc_collector: GrpcCollector) -> None:
    def build(tracer: Tracer) -> None:
        agent_run(tracer)  # SupportWorkflow, known from its RunWorkflow span
        attrs = {"temporal.workflow.id": "wf-2", "temporal.workflow.type": "Other"}
        with tracer.start_as_current_span("other", attributes=attrs):
            pass

    ingest(build)
    exporter = Exporter(
        name="c", endpoint=grpc_collector.url, protocol=GRPC, workflow_types=("SupportWorkflow",)
    )
    drain(forwarder.CollectorState(exporter))
    assert {s.name for s in grpc_collector.spans} >= {"ChatCompletion", "get_weather"}
    assert "other" not in {s.name for s in grpc_collector.spans}
    cursor = ExportCursor.objects.get(collector="c")
    assert cursor.skipped == 1 and cursor.delivered == Span.objects.count() - 1


def test_an_orphan_waits_for_its_ancestor_then_goes_with_its_ids(
    grpc_collector: GrpcCollector,
) -> None:
    spans = record(agent_run)
    rows = otlp.decode(protobuf_body(spans), otlp.PROTOBUF).rows
    llm = [r for r in rows if r["name"] == "ChatCompletion"]
    store.ingest([dict(r) for r in llm])  # the child arrives first, without ids
    state = forwarder.CollectorState(Exporter(name="c", endpoint=grpc_collector.url, protocol=GRPC))
    forwarder.step(state)
    assert grpc_collector.spans == []
    store.ingest(rows)  # its ancestors arrive and adopt it
    drain(state)
    (span,) = [s for s in grpc_collector.spans if s.name == "ChatCompletion"]
    assert span.attributes["temporal.workflow.id"] == "wf-1"


def test_an_orphan_without_ancestor_is_sent_after_the_hold(grpc_collector: GrpcCollector) -> None:
    rows = otlp.decode(protobuf_body(record(agent_run)), otlp.PROTOBUF).rows
    store.ingest([r for r in rows if r["name"] == "ChatCompletion"])
    state = forwarder.CollectorState(Exporter(name="c", endpoint=grpc_collector.url, protocol=GRPC))
    forwarder.step(state)
    assert state.hold is not None
    state.hold = (state.hold[0], time.monotonic() - forwarder.HOLD_SECONDS)
    forwarder.step(state)
    assert [s.name for s in grpc_collector.spans] == ["ChatCompletion"]


def test_one_forwarder_per_collector() -> None:
    exporter = Exporter(name="c", endpoint="http://127.0.0.1:9/v1/traces")
    first = forwarder.CollectorState(exporter, owner="one")
    second = forwarder.CollectorState(exporter, owner="two")
    assert forwarder.claim(first) and not forwarder.claim(second)
    assert forwarder.claim(first)
    forwarder.release("one")
    assert forwarder.claim(second) and not forwarder.claim(first)
    ExportCursor.objects.update(lease_until=timezone.now() - timedelta(seconds=1))
    assert forwarder.claim(first)


@pytest.mark.parametrize("protocol", [GRPC, HTTP_PROTOBUF])
def test_spans_leave_as_other_tools_read_them(
    protocol: str, grpc_collector: GrpcCollector, http_collector: Collector
) -> None:
    """The plugin's own OTel mode (no ids on any span) tied through the history, forwarded
    with GenAI and OpenInference attributes, the workflow id as session, the collector's
    project and the scope as received."""
    from tests.tracing.spans import native_run
    from tracing.links import HistoryLink

    rows = otlp.decode(
        protobuf_body(record(native_run, scope_attributes={"team": "agents"})), otlp.PROTOBUF
    ).rows
    store.ingest(rows)
    begin = next(r for r in rows if r["name"] == "temporal:startActivity")
    state = forwarder.CollectorState(
        Exporter(
            name="c",
            endpoint=(grpc_collector if protocol == GRPC else http_collector).url,
            protocol=protocol,
            project="support-agents",
        )
    )
    forwarder.step(state)  # nothing is tied yet: held, not sent without ids
    collector: Collector = grpc_collector if protocol == GRPC else http_collector
    assert collector.spans == []
    store.link_run(
        "wf-native",
        "run-native",
        [
            HistoryLink(
                trace_id=begin["trace_id"], span_id=begin["span_id"], kind="activity",
                activity_id="1", activity_type="invoke_model_activity",
                scheduled_ns=begin["start_ns"], closed_ns=begin["end_ns"], attempts=2,
            )
        ],
    )  # fmt: skip
    drain(state)
    assert len(collector.spans) == len(rows)
    for span in collector.spans:
        attrs = span.attributes
        assert attrs["temporal.workflow.id"] == "wf-native", span.name
        assert attrs["temporal.run.id"] == "run-native", span.name
        assert attrs["session.id"] == attrs["gen_ai.conversation.id"] == "wf-native"
        assert attrs["openinference.span.kind"] in {"AGENT", "LLM", "TOOL", "CHAIN"}
        assert dict(span.resource)["openinference.project.name"] == repr("support-agents")
        assert (span.scope, span.scope_version) == ("loomview.tests", "1.0")
        assert span.scope_attributes == "[('team', 'agents')]"
    by_name = {s.name: s for s in collector.spans}
    assert by_name["Triage agent"].attributes["gen_ai.agent.name"] == "Triage agent"
    assert by_name["Triage agent"].attributes["gen_ai.operation.name"] == "invoke_agent"
    answered = [s for s in collector.spans if s.name == "response" and s.attributes.get(
        "gen_ai.usage.input_tokens")]  # fmt: skip
    (llm,) = answered
    assert llm.attributes["gen_ai.usage.output_tokens"] == 31
    assert llm.attributes["gen_ai.operation.name"] == "chat"
    assert llm.attributes["gen_ai.provider.name"] == "openai"
    assert llm.attributes["temporal.activity.id"] == "1"
    assert llm.attributes["temporal.activity.attempt"] == 2
    # Temporal's own spans have a kind too (Phoenix shows "unknown" without one).
    assert by_name["temporal:startActivity"].attributes["openinference.span.kind"] == "CHAIN"
    sent = grpc_collector.metadata if protocol == GRPC else http_collector.headers
    assert all(
        {k.lower(): v for k, v in h.items()}.get("x-project-name") == "support-agents" for h in sent
    )

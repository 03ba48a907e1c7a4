"""Regression tests for hostile senders (issue 9): each one failed on the receiver before.

Requests are built by hand from ``opentelemetry-proto``'s classes, since no
well-behaved SDK sends what these tests send.
"""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus

from dashboard.run_page import span_tree
from tracing import correlation, encode, otlp, store
from tracing.models import RunSummary, Span

pytestmark = pytest.mark.django_db

PB = "application/x-protobuf"
URL = "/v1/traces"
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
NOW = time.time_ns() - 60 * 10**9
IDS = {"temporal.workflow.id": "wf-h", "temporal.run.id": "run-h"}


def sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


def span(
    n: int,
    parent: int = 0,
    name: str = "",
    attrs: dict[str, Any] | None = None,
    *,
    start: int = NOW,
    end: int | None = None,
    trace: bytes = TRACE,
) -> ProtoSpan:
    return ProtoSpan(
        trace_id=trace,
        span_id=sid(n),
        parent_span_id=sid(parent) if parent else b"",
        name=name or f"span-{n}",
        start_time_unix_nano=start,
        end_time_unix_nano=start + 1_000_000 if end is None else end,
        attributes=encode.key_values(attrs or {}),
    )


def request(*spans: ProtoSpan) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.extend(spans)
    return req


def post(client: Client, req: ExportTraceServiceRequest) -> ExportTraceServiceResponse:
    response = client.post(URL, req.SerializeToString(), content_type=PB)
    assert response.status_code == 200, response.content
    return ExportTraceServiceResponse.FromString(response.content)


def model_span(n: int, **attrs: Any) -> ProtoSpan:
    base = {**IDS, "temporal.activity.id": "1", "gen_ai.operation.name": "chat"}
    return span(n, name="chat demo", attrs={**base, **attrs})


def stored() -> set[str]:
    return set(Span.objects.values_list("span_id", flat=True))


# -- 1: cycles in parent links -------------------------------------------------


@pytest.mark.timeout(30)
def test_a_span_that_is_its_own_parent_does_not_stop_ingest(client: Client) -> None:
    post(client, request(span(1, parent=1)))
    post(client, request(span(2, parent=3), span(3, parent=2)))  # a cycle within one batch
    post(client, request(span(4, parent=5)))
    post(client, request(span(5, parent=4)))  # a cycle through a stored span
    post(client, request(span(6, attrs=IDS), span(7, parent=6)))
    assert stored() == {sid(n).hex() for n in range(1, 8)}
    assert Span.objects.get(span_id=sid(7).hex()).workflow_id == "wf-h"


@pytest.mark.timeout(30)
def test_a_long_cycle_of_orphans_is_walked_once_per_chain(client: Client) -> None:
    count = 5000
    spans = [span(n, parent=n % count + 1) for n in range(1, count + 1)]
    started = time.monotonic()
    post(client, request(*spans))
    assert time.monotonic() - started < 10
    assert Span.objects.count() == count


def test_nearest_carriers_is_bounded_and_cycle_safe() -> None:
    nodes = {
        ("t", "a"): {"parent_span_id": "b", "workflow_id": ""},
        ("t", "b"): {"parent_span_id": "a", "workflow_id": ""},
        ("t", "c"): {"parent_span_id": "d", "workflow_id": ""},
        ("t", "d"): {"parent_span_id": "c", "workflow_id": "wf"},
    }
    found = store.nearest_carriers(list(nodes), nodes)
    assert found[("t", "a")] is None and found[("t", "b")] is None
    assert found[("t", "c")] is nodes[("t", "d")]
    chain = {("t", str(i)): {"parent_span_id": str(i + 1), "workflow_id": ""} for i in range(999)}
    chain[("t", "999")] = {"parent_span_id": "", "workflow_id": "wf"}
    assert store.nearest_carriers([("t", "0")], chain)[("t", "0")] is None  # beyond the bound
    assert store.nearest_carriers([("t", "900")], chain)[("t", "900")] is chain[("t", "999")]


@pytest.mark.timeout(30)
def test_spans_in_a_cycle_with_run_ids_are_in_the_tree_the_story_and_the_export(
    client: Client,
) -> None:
    post(
        client,
        request(
            span(1, parent=2, attrs={**IDS, "gen_ai.agent.name": ""}),
            span(2, parent=1, attrs=IDS),
            span(3, parent=3, attrs={**IDS, "agents.span.type": "function"}),
            span(4, parent=1),
        ),
    )
    rows = store.spans_for_run("wf-h", "run-h")
    assert {r["span_id"] for r in rows} == {sid(n).hex() for n in (1, 2, 3, 4)}
    tree = span_tree(rows, NOW, NOW + 10**6)
    assert sorted(r.span["span_id"] for r in tree) == sorted(r["span_id"] for r in rows)
    story = correlation.correlate([], rows)
    assert [item.span_ids for item in story.items if item.kind == "tool"] == [[sid(3).hex()]]
    assert RunSummary.objects.get(workflow_id="wf-h").span_count == 4  # 4 inherits from 1
    exported = encode.request_from_rows(rows)
    assert encode.span_count(exported) == 4


# -- 2, 3: one span the store cannot hold ------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (span(9, attrs=IDS, end=2**63), "ahead of the receiver's clock"),
        (span(9, attrs=IDS, start=2**63 + 5, end=2**64 - 1), "ahead of the receiver's clock"),
        (span(9, attrs={**IDS, "temporal.activity.attempt": -1}), "attempt must be"),
        (span(9, attrs={**IDS, "temporal.activity.attempt": 2**40}), "attempt must be"),
        (span(9, attrs={**IDS, "temporal.activity.attempt": float("inf")}), "finite"),
        (model_span(9, **{"gen_ai.usage.input_tokens": float("inf")}), "finite"),
        (model_span(9, **{"gen_ai.usage.input_tokens": float("nan")}), "finite"),
        (model_span(9, **{"gen_ai.usage.input_tokens": 1e300}), "tokens_in must be"),
        (model_span(9, **{"gen_ai.usage.output_tokens": "9" * 30}), "tokens_out must be"),
        (model_span(9, **{"llm.token_count.prompt": "1e300"}), "tokens_in must be"),
        (model_span(9, **{"gen_ai.usage.input_tokens": 2**63 - 1}), "tokens_in must be"),
        (model_span(9, **{"gen_ai.usage.input_tokens": -5}), "tokens_in must be"),
    ],
)
def test_a_span_the_store_cannot_hold_is_rejected_alone(
    client: Client, bad: ProtoSpan, reason: str
) -> None:
    good = [model_span(1, **{"gen_ai.usage.input_tokens": 10}), span(2, attrs=IDS)]
    answer = post(client, request(good[0], bad, good[1]))
    assert answer.partial_success.rejected_spans == 1
    assert f"span {sid(9).hex()}" in answer.partial_success.error_message
    assert reason in answer.partial_success.error_message
    assert stored() == {sid(1).hex(), sid(2).hex()}
    summary = RunSummary.objects.get(workflow_id="wf-h")
    assert (summary.span_count, summary.tokens_in) == (2, 10)


def test_a_run_cannot_be_poisoned_by_a_huge_token_count(client: Client) -> None:
    post(client, request(model_span(1, **{"gen_ai.usage.input_tokens": 2**63 - 1})))
    for n in range(2, 5):
        answer = post(client, request(model_span(n, **{"gen_ai.usage.input_tokens": 10**9})))
        assert not answer.HasField("partial_success")
    summary = RunSummary.objects.get(workflow_id="wf-h")
    assert (summary.span_count, summary.tokens_in) == (3, 3 * 10**9)


def test_the_store_rejects_only_the_row_the_database_refuses() -> None:
    rows = otlp.rows_from_request(request(span(1, attrs=IDS), span(2, attrs=IDS))).rows
    rows[1]["attempt"] = -1  # past validation: the database's CHECK refuses it
    rows.append({**rows[0], "span_id": sid(3).hex(), "end_ns": 2**63})
    result = store.ingest(rows)
    assert stored() == {sid(1).hex()}
    assert len(result.rejected) == 2
    assert all("the store cannot hold it" in r for r in result.rejected)
    assert RunSummary.objects.get().span_count == 1


def test_a_database_that_cannot_write_answers_503_with_retry_after(client: Client) -> None:
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA query_only = ON")
    try:
        response = client.post(
            URL, request(span(1, attrs=IDS)).SerializeToString(), content_type=PB
        )
    finally:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA query_only = OFF")
    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert Status.FromString(response.content).code == 14  # UNAVAILABLE
    post(client, request(span(1, attrs=IDS)))
    assert stored() == {sid(1).hex()}


# -- 4: deep nesting -------------------------------------------------------------


def test_deeply_nested_json_body_is_a_400_status(client: Client) -> None:
    body = '{"resourceSpans": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post(URL, body, content_type="application/json")
    assert response.status_code == 400
    assert "nested too deeply" in json.loads(response.content)["message"]


def test_deeply_nested_attribute_value_is_a_400_status(client: Client) -> None:
    depth = 1000
    deep = '{"kvlistValue": {"values": [{"key": "k", "value": ' * depth
    deep += '{"stringValue": "x"}' + "}]}}" * depth
    document = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE.hex(),
                                "spanId": sid(1).hex(),
                                "name": "deep",
                                "startTimeUnixNano": str(NOW),
                                "endTimeUnixNano": str(NOW),
                                "attributes": [{"key": "deep", "value": "DEEP"}],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    # json.dumps would itself recurse too deeply: splice the value in as text.
    text = json.dumps(document).replace('"DEEP"', deep)
    response = client.post(URL, text, content_type="application/json")
    assert response.status_code == 400
    assert json.loads(response.content)["message"]
    assert not Span.objects.exists()


# -- 6: bounded ids, names and times ---------------------------------------------------


def test_an_id_longer_than_its_column_rejects_the_span(client: Client) -> None:
    huge = {"temporal.workflow.id": "w" * 5_000_000, "temporal.run.id": "r"}
    answer = post(client, request(span(1, attrs=huge), span(2, attrs=IDS)))
    assert answer.partial_success.rejected_spans == 1
    assert "workflow_id is longer than 1000 characters" in (answer.partial_success.error_message)
    assert stored() == {sid(2).hex()}


def test_a_span_far_in_the_future_is_rejected(client: Client) -> None:
    year_2191 = 7_000_000_000 * 10**9
    answer = post(client, request(span(1, attrs=IDS, start=year_2191), span(2, attrs=IDS)))
    assert answer.partial_success.rejected_spans == 1
    assert (RunSummary.objects.get().last_span_ns or 0) < time.time_ns()


def test_long_names_and_values_are_truncated_with_a_marker(client: Client) -> None:
    attrs = {
        **IDS,
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "A" * 10_000,
        "gen_ai.request.model": "m" * 10_000,
        "big": "v" * (otlp.MAX_VALUE_CHARS + 10),
        "k" * 10_000: 1,
    }
    bad = span(1, name="n" * 100_000, attrs=attrs)
    bad.status.code = ProtoStatus.STATUS_CODE_ERROR
    bad.status.message = "e" * 100_000
    post(client, request(bad))
    row = Span.objects.get()
    assert len(row.name) == otlp.MAX_NAME_CHARS and row.name.endswith(otlp.TRUNCATED)
    assert len(row.agent) == len(row.model) == otlp.MAX_LABEL_CHARS
    assert row.agent.endswith(otlp.TRUNCATED)
    assert len(row.status_message) == otlp.MAX_MESSAGE_CHARS
    attributes = row.data["attributes"]
    assert len(attributes["big"]) == otlp.MAX_VALUE_CHARS
    assert attributes["big"].endswith(otlp.TRUNCATED)
    assert max(len(k) for k in attributes) == otlp.MAX_KEY_CHARS
    assert len(RunSummary.objects.get().last_error) == otlp.MAX_MESSAGE_CHARS


def test_a_run_lists_a_bounded_number_of_agents(client: Client) -> None:
    agent = {**IDS, "gen_ai.operation.name": "invoke_agent"}
    spans = [span(n, attrs={**agent, "gen_ai.agent.name": f"agent {n}"}) for n in range(1, 201)]
    post(client, request(*spans))
    assert len(RunSummary.objects.get().agents) == store.MAX_SUMMARY_AGENTS


# -- 10: the low ones ----------------------------------------------------------------


def test_every_member_of_a_multi_member_gzip_body_is_read(client: Client) -> None:
    first = request(span(1, attrs=IDS)).SerializeToString()
    second = request(span(2, attrs=IDS)).SerializeToString()
    # Two serialized requests concatenated are one request with both spans (protobuf merge).
    body = gzip.compress(first) + gzip.compress(second)
    response = client.post(URL, body, content_type=PB, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 200
    assert stored() == {sid(1).hex(), sid(2).hex()}


def test_multipart_body_is_415(client: Client) -> None:
    response = client.post(URL, {"file": "x"})  # the test client sends multipart/form-data
    assert response.status_code == 415
    assert "multipart/form-data" in json.loads(response.content)["message"]


# -- 7: secrets from other apps are redacted at the door ---------------------------------

SECRETS = {
    "openai": "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 2,
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6y",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "github": "ghp_" + "a" * 36,
}


def _secret_spans() -> ExportTraceServiceRequest:
    attrs = {
        **IDS,
        "gen_ai.operation.name": "chat",
        "temporal.activity.id": "1",
        "input.value": f"my key is {SECRETS['openai']} and {SECRETS['aws']}",
        "output.value": [f"token {SECRETS['github']}", {"nested": SECRETS["jwt"]}],
        "api_key": "plain-looking-value-1",
        "http.request.header.authorization": "opaque-2",
        "db.password": "hunter2-3",
        "note": "customer ACME-123456 called",
    }
    bad = span(1, name=f"response {SECRETS['openai']}", attrs=attrs)
    bad.status.code = ProtoStatus.STATUS_CODE_ERROR
    bad.status.message = f"401 for Bearer {SECRETS['jwt']}"
    bad.events.add(name=f"retry {SECRETS['github']}", time_unix_nano=NOW)
    req = request(bad)
    req.resource_spans[0].resource.attributes.extend(
        encode.key_values({"service.name": "their-app", "deploy.token": "opaque-4"})
    )
    return req


def _leaks(text: str) -> list[str]:
    values = [*SECRETS.values(), "plain-looking-value-1", "opaque-2", "hunter2-3", "opaque-4"]
    return [v for v in values if v in text]


def test_secrets_from_other_apps_are_redacted_on_ingest_everywhere(
    client: Client, admin_client: Client
) -> None:
    post(client, _secret_spans())
    row = Span.objects.get()
    assert _leaks(json.dumps(row.data)) == []
    assert _leaks(row.name + row.status_message) == []
    assert row.name == "response [REDACTED]"
    assert row.data["attributes"]["api_key"] == "[REDACTED]"
    assert _leaks(RunSummary.objects.get().last_error) == []
    base = "/runs/wf-h/run-h/"
    for path in (
        base,
        f"{base}spans/{row.span_id}/",
        "/api/runs/wf-h/run-h/",
        "/api/runs/",
        "/",
        f"{base}otlp.json",
    ):
        response = admin_client.get(path)
        assert response.status_code == 200, path
        assert _leaks(response.content.decode()) == [], path
    exported = encode.request_from_rows(store.spans_for_run("wf-h", "run-h"))
    assert _leaks(str(exported)) == []


def test_configured_patterns_are_redacted_at_ingest_and_export(client: Client) -> None:
    from telemetry import redact

    redact.set_extra_patterns([r"ACME-\d{6}"])
    try:
        post(client, _secret_spans())
        row = Span.objects.get()
        assert row.data["attributes"]["note"] == "customer [REDACTED] called"
        row.data["attributes"]["note"] = "stored before ACME-654321 was a pattern"
        exported = encode.request_from_rows([store.span_row(row)])
        assert "ACME-654321" not in str(exported)
    finally:
        redact.set_extra_patterns([])


def test_the_exporter_redacts_span_and_event_names_stored_in_the_clear() -> None:
    rows = otlp.rows_from_request(request(span(1, attrs=IDS))).rows
    rows[0]["name"] = f"response {SECRETS['openai']}"
    rows[0]["events"] = [{"name": f"retry {SECRETS['github']}", "time_ns": NOW, "attributes": {}}]
    exported = encode.request_from_rows(rows)
    assert _leaks(str(exported)) == []
    assert "response [REDACTED]" in str(exported)

"""Property-based fuzzing of the receiver and the store (Hypothesis).

What a sender controls is drawn at random: OTLP requests with ids that
collide, form parent cycles or have the wrong length, times anywhere in
uint64, enum values outside their range, correlation attributes of every
type (huge, negative, non-finite, numeric strings), nested values, both
encodings, gzip; then raw bytes, bit-flipped bodies and JSON whose values
have the wrong type. For every request:

- no 5xx, and an answer within REQUEST_DEADLINE_SECONDS;
- nothing stored from a request answered 4xx;
- all or nothing per span: every distinct span of a 200 is stored or counted
  in ``partial_success``;
- afterwards every run summary equals a recount from the span table, and a
  good batch is still stored.

Bounded (examples and seconds) so ``make test`` keeps its budget; ``CI=true``
makes the examples the same on every run.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import time
from typing import Any

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from telemetry import vocab
from tests.tracing.spans import agent_run, json_document, protobuf_body, record
from tracing import store
from tracing.models import RunSummary, Span

pytestmark = pytest.mark.django_db

URL = "/v1/traces"
PB = "application/x-protobuf"
JSON = "application/json"
REQUEST_DEADLINE_SECONDS = 10.0
NOW = time.time_ns()

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies ------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)


def _mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> Any:
    """common nine times in ten: structure (parents, cycles, duplicates) needs it."""
    return st.integers(0, 9).flatmap(lambda n: rare if n == 0 else common)


# Small pools, so ids collide: duplicates, parents in the batch, self-parents, cycles.
TRACE_IDS = _mostly(
    st.sampled_from(
        [bytes.fromhex("0af7651916cd43dd8448eb211c80319c"),
         bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")]
    ),
    st.binary(max_size=20),
)  # fmt: skip
SPAN_IDS = _mostly(st.integers(1, 6).map(lambda n: n.to_bytes(8, "big")), st.binary(max_size=10))
PARENT_IDS = _mostly(SPAN_IDS, st.just(b""))
TIMES = _mostly(
    st.integers(NOW - 10**12, NOW),
    st.one_of(
        st.just(0),
        st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, NOW + 25 * 3600 * 10**9]),
        UINT64,
    ),
)
TEXT = st.text(max_size=40) | st.sampled_from(["sk-proj-" + "x" * 30, "ACME", "a" * 300])
NUMBERISH = st.one_of(
    INT64,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1.0, 0.5, 2**31, 2**31 - 1]),
    st.sampled_from(["9" * 30, "1e300", "Infinity", "NaN", "-3", "12", " 7 ", "0x10"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERISH, TEXT, st.binary(max_size=16))
IDS = _mostly(st.sampled_from(["wf-a", "wf-b"]), st.sampled_from(["", "w" * 1001]) | TEXT)
RUN_IDS = _mostly(st.sampled_from(["run-1", "run-2", ""]), TEXT)
CORRELATION_KEYS = [
    *vocab.WORKFLOW_ID_KEYS,
    *vocab.RUN_ID_KEYS,
    *vocab.ACTIVITY_ID_KEYS,
    vocab.ACTIVITY_ATTEMPT,
    *vocab.INPUT_TOKEN_KEYS,
    *vocab.OUTPUT_TOKEN_KEYS,
    vocab.OI_SPAN_KIND,
    vocab.GEN_AI_OPERATION,
    vocab.AGENTS_SPAN_TYPE,
    *vocab.AGENT_KEYS,
    *vocab.MODEL_KEYS,
    vocab.WORKFLOW_TYPE,
    "api_key",
]


def _any_value(value: Any) -> AnyValue:
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        result = AnyValue()
        result.array_value.values.extend(_any_value(v) for v in value)
        return result
    if isinstance(value, dict):
        result = AnyValue()
        result.kvlist_value.values.extend(
            KeyValue(key=k, value=_any_value(v)) for k, v in value.items()
        )
        return result
    return AnyValue(string_value=value)


VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def attribute_sets(draw: st.DrawFn) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if draw(st.integers(0, 2)) == 0:
        attrs[vocab.WORKFLOW_ID] = draw(IDS)
        attrs[vocab.RUN_ID] = draw(RUN_IDS)
    if draw(st.booleans()):
        attrs[vocab.ACTIVITY_ID] = draw(st.sampled_from(["1", "2"]))
        attrs[vocab.GEN_AI_OPERATION] = "chat"
        attrs[vocab.ACTIVITY_ATTEMPT] = draw(_mostly(st.integers(1, 3), NUMBERISH))
        attrs[vocab.GEN_AI_INPUT_TOKENS] = draw(_mostly(st.integers(0, 500), NUMBERISH))
        attrs[vocab.GEN_AI_AGENT] = draw(st.sampled_from(["Triage", "Billing"]) | TEXT)
    for key in draw(st.lists(st.sampled_from(CORRELATION_KEYS) | TEXT, max_size=2)):
        attrs[key] = draw(VALUES)
    return attrs


@st.composite
def spans(draw: st.DrawFn) -> ProtoSpan:
    start = draw(TIMES)
    end = draw(_mostly(st.integers(0, 10**10).map(lambda d: start + d), TIMES))
    span = ProtoSpan(
        trace_id=draw(TRACE_IDS),
        span_id=draw(SPAN_IDS),
        parent_span_id=draw(PARENT_IDS),
        name=draw(
            TEXT | st.sampled_from(["RunActivity:invoke_model_activity", "RunWorkflow:triage"])
        ),
        start_time_unix_nano=start,
        end_time_unix_nano=min(end, 2**64 - 1),
        kind=draw(_mostly(st.integers(0, 5), st.integers(-(2**31), 2**31 - 1))),
    )
    for key, value in draw(attribute_sets()).items():
        span.attributes.add(key=key, value=_any_value(value))
    span.status.code = draw(_mostly(st.integers(0, 2), st.integers(-(2**31), 2**31 - 1)))
    span.status.message = draw(TEXT)
    if draw(st.booleans()):
        span.events.add(name=draw(TEXT), time_unix_nano=draw(TIMES))
    return span


@st.composite
def export_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.add(key="service.name", value=_any_value(draw(SCALARS)))
        resource_spans.scope_spans.add().spans.extend(draw(st.lists(spans(), max_size=8)))
    return request


# -- helpers ---------------------------------------------------------------------


def _stored_keys() -> set[tuple[str, str]]:
    return set(Span.objects.values_list("trace_id", "span_id"))


def _post(client: Client, body: bytes, content_type: str, gzipped: bool = False) -> Any:
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    started = time.monotonic()
    response = client.post(URL, body, content_type=content_type, headers=headers)
    elapsed = time.monotonic() - started
    assert response.status_code < 500, response.content[:500]
    assert elapsed < REQUEST_DEADLINE_SECONDS
    return response


def _as_json(request: ExportTraceServiceRequest) -> bytes:
    # Invalid ids become hex of what they are, as a sender would write them.
    return json.dumps(json_document(request)).encode()


def _recount_matches_summaries() -> None:
    """Every run summary equals a recount of its run's spans from the span table."""
    for summary in RunSummary.objects.all():
        rows = list(
            Span.objects.filter(workflow_id=summary.workflow_id, run_id=summary.run_id)
            .order_by("id")
            .values(*store._SUMMARY_INPUT)
        )
        fresh = RunSummary(
            workflow_id=summary.workflow_id, run_id=summary.run_id, agents=[], model_attempts={}
        )
        store.apply_rows(fresh, rows)
        where = f"{summary.workflow_id!r}/{summary.run_id!r}"
        assert summary.span_count == fresh.span_count == len(rows), where
        assert (summary.tokens_in, summary.tokens_out) == (fresh.tokens_in, fresh.tokens_out), where
        assert summary.model_attempts == fresh.model_attempts, where
        assert (summary.model_calls, summary.attempts, summary.failed_attempts) == (
            fresh.model_calls,
            fresh.attempts,
            fresh.failed_attempts,
        ), where
        assert (summary.first_span_ns, summary.last_span_ns, summary.last_error_ns) == (
            fresh.first_span_ns,
            fresh.last_span_ns,
            fresh.last_error_ns,
        ), where
        if len(fresh.agents) < store.MAX_SUMMARY_AGENTS:
            assert set(summary.agents) == set(fresh.agents), where


def _still_ingests(client: Client) -> None:
    spans = record(lambda t: agent_run(t, f"wf-check-{random.random()}", "run-check"))
    response = client.post(URL, protobuf_body(spans), content_type=PB)
    assert response.status_code == 200
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert not parsed.HasField("partial_success")


# -- properties ------------------------------------------------------------------


@FUZZ
@given(request=export_requests(), as_json=st.booleans(), gzipped=st.booleans())
def test_any_export_request_is_stored_span_by_span(
    client: Client, request: ExportTraceServiceRequest, as_json: bool, gzipped: bool
) -> None:
    before = _stored_keys()
    body = _as_json(request) if as_json else request.SerializeToString()
    response = _post(
        client, gzip.compress(body) if gzipped else body, JSON if as_json else PB, gzipped
    )
    after = _stored_keys()
    assert before <= after
    if response.status_code != 200:
        assert after == before, "a 4xx stored something"
        return
    if as_json:
        rejected = json.loads(response.content).get("partialSuccess", {}).get("rejectedSpans", 0)
    else:
        rejected = ExportTraceServiceResponse.FromString(
            response.content
        ).partial_success.rejected_spans
    keys = {
        (s.trace_id.hex(), s.span_id.hex())
        for r in request.resource_spans
        for scope in r.scope_spans
        for s in scope.spans
    }
    # Every distinct span is stored (now or before) or was reported rejected.
    assert len(keys - after) <= int(rejected)
    _recount_matches_summaries()


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 40), cut=st.integers(0, 4000))
def test_bit_flipped_and_cut_bodies_never_fail_the_server(
    client: Client, seed: int, flips: int, cut: int
) -> None:
    rng = random.Random(seed)
    spans = record(lambda t: agent_run(t, "wf-flip", f"run-{seed % 3}", failed_attempts=1))
    for content_type, body in ((PB, protobuf_body(spans)), (JSON, _as_json_spans(spans))):
        for gzipped in (False, True):
            data = bytearray(gzip.compress(body) if gzipped else body)
            for _ in range(flips):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            _post(client, bytes(data[: len(data) - cut % len(data)]), content_type, gzipped)
    _recount_matches_summaries()
    _still_ingests(client)


def _as_json_spans(spans: list[Any]) -> bytes:
    from tests.tracing.spans import json_body

    return json_body(spans)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_json_with_values_of_the_wrong_type_is_a_clean_answer(
    client: Client, data: st.DataObject
) -> None:
    spans = record(lambda t: agent_run(t, "wf-json", "run-json"))
    document = json_document(__import__("tests.tracing.spans", fromlist=["x"]).request_of(spans))
    # Replace one value somewhere in the document with anything JSON can hold.
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            paths.append((node, key))
            if isinstance(value, dict | list):
                walk(value)

    walk(document)
    for _ in range(data.draw(st.integers(1, 3))):
        node, key = data.draw(st.sampled_from(paths))
        node[key] = data.draw(JSON_VALUES)
    try:
        # Strict JSON when the drawn values allow it; NaN and Infinity literals otherwise.
        text = json.dumps(document, allow_nan=data.draw(st.booleans()))
    except ValueError:
        text = json.dumps(document, allow_nan=True)
    body = text.encode()
    _post(client, body, JSON)
    _recount_matches_summaries()


@FUZZ
@given(body=st.binary(max_size=2000), content_type=st.sampled_from([PB, JSON]))
def test_random_bytes_are_a_clean_answer(client: Client, body: bytes, content_type: str) -> None:
    before = _stored_keys()
    response = _post(client, body, content_type)
    if response.status_code != 200:
        assert _stored_keys() == before


def test_the_server_still_ingests_after_the_fuzzing(client: Client) -> None:
    # A body with every id base64 (proto3 JSON) instead of hex is a clean 400 too.
    document = json_document(
        __import__("tests.tracing.spans", fromlist=["x"]).request_of(record(agent_run))
    )
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["traceId"] = base64.b64encode(bytes(16)).decode()
    _post(client, json.dumps(document).encode(), JSON)
    _still_ingests(client)

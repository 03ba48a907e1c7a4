"""The worker's OTLP encoder writes exactly the bytes the stock OTLP encoder does."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from telemetry import wire

RESOURCES = [
    Resource.create({"service.name": "loomview-worker"}),
    Resource({"service.name": "other", "k8s.pod.uid": "ü-ñ", "replicas": 3}, "https://schema/1"),
]
SCOPES = [
    InstrumentationScope("loomview.agents_bridge", "1"),
    InstrumentationScope("temporalio", None, "https://schema/2", {"lib": "x"}),
    None,
]
VALUES: list[Any] = [
    "",
    "plain",
    "ünïcødé → 🧵",
    "x" * 300,
    0,
    1,
    -1,
    127,
    128,
    2**63 - 1,
    -(2**63),
    0.0,
    -2.5,
    1e300,
    True,
    False,
    ("a", "b"),
    (1, 2, 3),
    (True, False),
    (1.5,),
    (),
    ["list", "of", "str"],
    b"\x00\xff",
]


def context(rng: random.Random, remote: bool = False) -> SpanContext:
    state = TraceState([("vendor", "v1"), ("other", "x")]) if rng.random() < 0.2 else None
    return SpanContext(
        rng.getrandbits(128) or 1,
        rng.getrandbits(64) or 1,
        is_remote=remote,
        trace_flags=TraceFlags(1),
        trace_state=state,
    )


def attributes(rng: random.Random, size: int) -> dict[str, Any]:
    return {f"attr.{rng.randint(0, 40)}.{i}": rng.choice(VALUES) for i in range(size)}


def span(rng: random.Random) -> ReadableSpan:
    start = rng.choice([0, 1, rng.getrandbits(63)])
    return ReadableSpan(
        name=rng.choice(["", "RunWorkflow:triage", "chat gpt-4o-mini", "handoff A → B"]),
        context=context(rng),
        parent=rng.choice([None, context(rng), context(rng, remote=True)]),
        resource=rng.choice(RESOURCES),
        attributes=attributes(rng, rng.randint(0, 25)),
        events=[
            Event(f"event {n}", attributes(rng, rng.randint(0, 3)), rng.choice([0, start]))
            for n in range(rng.choice([0, 0, 1, 2]))
        ],
        links=[
            Link(context(rng, remote=rng.random() < 0.5), attributes(rng, rng.randint(0, 2)))
            for _ in range(rng.choice([0, 0, 1]))
        ],
        kind=rng.choice(list(SpanKind)),
        status=rng.choice(
            [
                Status(StatusCode.UNSET),
                Status(StatusCode.OK),
                Status(StatusCode.ERROR, "boom: ünïcødé " * rng.randint(0, 20)),
            ]
        ),
        start_time=start,
        end_time=start + rng.randint(0, 10**9) if start else rng.choice([0, None]),
        instrumentation_scope=rng.choice(SCOPES),
    )


@pytest.mark.parametrize("seed", range(12))
def test_bytes_equal_the_stock_encoders(seed: int) -> None:
    rng = random.Random(seed)
    spans = [span(rng) for _ in range(rng.randint(1, 40))]
    ours = wire.encode_spans(spans)
    assert ours == stock_encode(spans).SerializeToString()
    # And it is a request opentelemetry-proto reads back.
    assert len(ExportTraceServiceRequest.FromString(ours).resource_spans) >= 1


def test_nested_and_unusual_values_match_too() -> None:
    spans = [
        ReadableSpan(
            name="values",
            context=SpanContext(1, 2, is_remote=False),
            resource=RESOURCES[0],
            attributes={"none": None, "mapping": {"a": 1, "b": ["x"]}, "nested": [[1, 2], ["y"]]},
            instrumentation_scope=SCOPES[0],
        )
    ]
    assert wire.encode_spans(spans) == stock_encode(spans).SerializeToString()


def test_an_unencodable_attribute_is_dropped_not_the_span() -> None:
    spans = [
        ReadableSpan(
            name="odd",
            context=SpanContext(1, 2, is_remote=False),
            resource=RESOURCES[0],
            attributes={"ok": "yes", "odd": object()},  # type: ignore[dict-item]
            instrumentation_scope=SCOPES[0],
        )
    ]
    decoded = ExportTraceServiceRequest.FromString(wire.encode_spans(spans))
    (only,) = decoded.resource_spans[0].scope_spans[0].spans
    assert [kv.key for kv in only.attributes] == ["ok"]


@pytest.mark.parametrize("seed", range(6))
def test_records_make_the_same_request(seed: int) -> None:
    """Spans encoded one by one at their end (``span_record``) and joined later
    (``encode_records``) give the stock encoder's spans, resources and scopes."""
    rng = random.Random(seed)
    spans = [span(rng) for _ in range(rng.randint(1, 40))]
    ours = ExportTraceServiceRequest.FromString(
        wire.encode_records([wire.span_record(s) for s in spans])
    )
    stock = stock_encode(spans)

    def flat(request: Any) -> list[tuple[bytes, str, bytes, str, bytes]]:
        return sorted(
            (
                rs.resource.SerializeToString(),
                rs.schema_url,
                ss.scope.SerializeToString(),
                ss.schema_url,
                one.SerializeToString(),
            )
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for one in ss.spans
        )

    assert flat(ours) == flat(stock)
    # One entry per distinct resource, as many scopes as the spans use.
    assert len(ours.resource_spans) == len(
        {(rs.resource.SerializeToString(), rs.schema_url) for rs in stock.resource_spans}
    )

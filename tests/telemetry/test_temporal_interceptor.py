"""The lean Temporal OpenTelemetry plugin makes what Temporal's own plugin makes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from temporalio.api.common.v1 import Payload
from temporalio.contrib.opentelemetry import _otel_interceptor as stock
from temporalio.converter import PayloadConverter

from telemetry.temporal_interceptor import HEADER, context_from_headers, context_to_headers
from tests.conftest import TemporalServer

ROOT = Path(__file__).resolve().parents[2]
OTHER = {"other": Payload(metadata={"encoding": b"binary/plain"}, data=b"kept")}


def test_headers_are_the_stock_payload_byte_for_byte() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("outer"):
        token = otel_context.attach(baggage.set_baggage("tenant", "a b,c"))
        try:
            ours, theirs = context_to_headers(OTHER), stock._context_to_headers(OTHER)
        finally:
            otel_context.detach(token)
    assert ours.keys() == theirs.keys() == {"other", HEADER}
    assert ours[HEADER].SerializeToString() == theirs[HEADER].SerializeToString()
    assert ours["other"] is OTHER["other"]
    # No current span and no baggage: no header, as Temporal's.
    assert context_to_headers(OTHER) is OTHER
    assert stock._context_to_headers(OTHER) is OTHER
    # A span alone (the usual header, written without the propagators), an unsampled
    # one, one with trace state: the same bytes too.
    vendor = TraceState([("k", "v")])
    for flags, state in [(TraceFlags(1), None), (TraceFlags(0), None), (TraceFlags(1), vendor)]:
        remote = SpanContext(2**127 + 5, 2**63 + 9, True, flags, state)
        token = otel_context.attach(set_span_in_context(NonRecordingSpan(remote)))
        try:
            ours, theirs = context_to_headers(OTHER), stock._context_to_headers(OTHER)
        finally:
            otel_context.detach(token)
        assert ours[HEADER].SerializeToString() == theirs[HEADER].SerializeToString()


def plain(context: dict[str, object]) -> dict[str, object]:
    """A context's values, spans as their span contexts (spans do not compare equal)."""
    return {
        key: value.get_span_context() if hasattr(value, "get_span_context") else value
        for key, value in context.items()
    }


def test_headers_read_as_the_stock_reader_reads_them() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    zeros = "00-" + "0" * 32 + "-b7ad6b7169203331-01"
    # A later version is read too (the W3C spec's forward compatibility).
    readable = (traceparent, traceparent.replace("-01", "-00"), "01" + traceparent[2:])
    carriers = [
        {"traceparent": traceparent},
        {"traceparent": readable[1]},
        {"traceparent": traceparent, "tracestate": "k=v", "baggage": "tenant=a"},
        {"traceparent": "00-garbage"},
        {},
        # The usual header's length, not its form: read as the propagators read it.
        {"traceparent": zeros},
        {"traceparent": "ff" + traceparent[2:]},
        {"traceparent": readable[2]},
        {"traceparent": traceparent.upper()},
        {"traceparent": traceparent[:-3] + "-0x"},
        {"traceparent": " " + traceparent[1:]},
        {"tracepar3nt": traceparent + "x"},
    ]
    for carrier in carriers:
        headers = {HEADER: PayloadConverter.default.to_payloads([carrier])[0]}
        ours = plain(context_from_headers(headers))
        assert ours == plain(stock._headers_to_context(headers))
        assert bool(ours) == (carrier.get("traceparent") in readable)
    # No header: no context, as Temporal's reader.
    assert context_from_headers({}) == stock._headers_to_context({}) == {}
    # JSON that is not an object, or not JSON: no context, where Temporal's raises
    # (and fails the workflow task or activity that carried it).
    for data in (b"[1, 2]", b"{not json", b'"text"'):
        odd = {HEADER: Payload(metadata={"encoding": b"json/plain"}, data=data)}
        assert context_from_headers(odd) == {}
        with pytest.raises((AttributeError, RuntimeError)):
            stock._headers_to_context(odd)


def spans_of(mode: str, server: TemporalServer) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.telemetry.interceptor_app", mode, server.address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    spans: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return spans


def test_same_spans_as_temporals_plugin(temporal_server: TemporalServer) -> None:
    lean, theirs = spans_of("lean", temporal_server), spans_of("stock", temporal_server)
    assert lean == theirs
    names = sorted(span["name"] for span in lean)
    assert names == sorted(
        [
            "StartWorkflow:Calls",
            "RunWorkflow:Calls",
            "StartActivity:shout",
            "RunActivity:shout",
            "StartActivity:refuse",
            "RunActivity:refuse",
            "StartWorkflow:Fails",
            "RunWorkflow:Fails",
        ]
    )
    by_name = {span["name"]: span for span in lean}
    assert by_name["RunActivity:shout"]["parent"] == "StartActivity:shout"
    assert by_name["RunActivity:refuse"]["status"][0] == "ERROR"
    assert by_name["RunActivity:refuse"]["events"] == [
        [
            "exception",
            ["exception.escaped", "exception.message", "exception.stacktrace", "exception.type"],
        ]
    ]
    assert by_name["RunWorkflow:Fails"]["status"][0] == "ERROR"

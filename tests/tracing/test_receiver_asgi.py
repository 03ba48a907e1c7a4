"""POST /v1/traces through dashboard.asgi's application: the receiver's own ASGI path
(tracing.asgi), which answers without Django's middleware. The Django view's
tests (test_receiver.py, test_hostile.py, test_fuzz.py) cover the shared
logic (tracing.views.export); these cover what only this path does."""

from __future__ import annotations

import asyncio
import gzip
import threading
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.db import OperationalError
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.trace import Tracer
from pytest_django.fixtures import Settings

from dashboard.asgi import application
from tests.tracing.spans import agent_run, json_body, protobuf_body, record
from tracing import asgi as receiver_asgi
from tracing import store
from tracing.groups import run_group
from tracing.models import Span

PB = "application/x-protobuf"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def spans() -> list:
    return record(lambda t: agent_run(t, failed_attempts=1))


class Reply:
    def __init__(self, messages: list[dict[str, Any]], reads: int) -> None:
        start = messages[0]
        self.status: int = start["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        self.body = b"".join(m.get("body", b"") for m in messages[1:])
        self.reads = reads  # receive() calls the app made


async def post(
    body: bytes,
    headers: dict[str, str] | None = None,
    pieces: int = 1,
    method: str = "POST",
    path: str = "/v1/traces",
    declared: int | None = None,
    scheme: str = "http",
) -> Reply:
    all_headers = {
        "host": "127.0.0.1",
        "content-type": PB,
        "content-length": str(len(body) if declared is None else declared),
        **(headers or {}),
    }
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in all_headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    size = -(-len(body) // pieces) if body else 1
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if not chunks:
            await asyncio.Event().wait()  # a client that stays connected
        piece = chunks.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app: Any = application
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    return Reply(sent, reads)


async def test_an_export_is_stored_without_django_middleware(spans: list) -> None:
    reply = await post(protobuf_body(spans))
    assert reply.status == 200
    assert reply.headers["content-type"] == PB
    assert not ExportTraceServiceResponse.FromString(reply.body).HasField("partial_success")
    assert await Span.objects.acount() == 7
    # The site's response policy, as the middleware adds it to every other answer.
    assert reply.headers["content-security-policy"].startswith("default-src 'self'")
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["x-frame-options"] == "DENY"
    # No session, no CSRF cookie: nothing of Django's request cycle ran.
    assert "set-cookie" not in reply.headers


async def test_a_body_in_pieces_is_joined(spans: list) -> None:
    reply = await post(protobuf_body(spans), pieces=7)
    assert reply.status == 200
    assert reply.reads == 7
    assert await Span.objects.acount() == 7


async def test_json_and_gzip_are_accepted(spans: list) -> None:
    body = gzip.compress(json_body(spans))
    headers = {"content-type": "application/json; charset=utf-8", "content-encoding": "gzip"}
    reply = await post(body, headers)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "application/json"
    assert await Span.objects.acount() == 7


async def test_a_declared_length_over_the_limit_is_413_unread(
    spans: list, settings: Settings
) -> None:
    settings.LOOMVIEW_OTLP_MAX_BODY_BYTES = 100
    reply = await post(protobuf_body(spans))
    assert reply.status == 413
    assert reply.reads == 0
    assert Status.FromString(reply.body).code == 8  # RESOURCE_EXHAUSTED


async def test_a_body_past_the_limit_is_413_and_reading_stops(
    spans: list, settings: Settings
) -> None:
    body = protobuf_body(spans)
    settings.LOOMVIEW_OTLP_MAX_BODY_BYTES = len(body) // 2
    # Declares less than it sends: the limit holds on what arrives.
    reply = await post(body, pieces=8, declared=10)
    assert reply.status == 413
    assert reply.reads < 8
    assert await Span.objects.acount() == 0


async def test_a_gzip_bomb_is_413(settings: Settings) -> None:
    settings.LOOMVIEW_OTLP_MAX_BODY_BYTES = 64 * 1024
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))
    reply = await post(bomb, {"content-encoding": "gzip"})
    assert reply.status == 413


async def test_refusals_from_the_headers(spans: list, settings: Settings) -> None:
    body = protobuf_body(spans)
    assert (await post(body, {"content-type": "text/plain"})).status == 415
    assert (await post(body, {"content-encoding": "br"})).status == 415
    settings.LOOMVIEW_OTLP_TOKEN = "s3cret-token"
    missing = await post(body)
    assert missing.status == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert (await post(body, {"authorization": "Bearer s3cret-tokem"})).status == 401
    assert (await post(body, {"authorization": "Bearer s3cret-token"})).status == 200
    assert await Span.objects.acount() == 7


async def test_a_host_not_allowed_is_400_and_stores_nothing(spans: list) -> None:
    reply = await post(protobuf_body(spans), {"host": "evil.example"})
    assert reply.status == 400
    assert await Span.objects.acount() == 0


async def test_malformed_and_partial(spans: list) -> None:
    bad = await post(b"\xff\xff\xff\xffgarbage")
    assert bad.status == 400
    assert Status.FromString(bad.body).code == 3  # INVALID_ARGUMENT
    request = ExportTraceServiceRequest.FromString(protobuf_body(spans))
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\0" * 16
    partial = await post(request.SerializeToString())
    assert partial.status == 200
    answer = ExportTraceServiceResponse.FromString(partial.body)
    assert answer.partial_success.rejected_spans == 1
    assert "trace_id" in answer.partial_success.error_message
    assert await Span.objects.acount() == 6


async def test_a_database_failure_is_503_with_retry_after(
    spans: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(rows: list) -> store.IngestResult:
        raise OperationalError("database is locked")

    monkeypatch.setattr(store, "ingest", locked)
    reply = await post(protobuf_body(spans))
    assert reply.status == 503
    assert int(reply.headers["retry-after"]) > 0
    assert Status.FromString(reply.body).code == 14  # UNAVAILABLE


async def test_an_unexpected_error_is_500_not_a_hang(
    spans: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(rows: list) -> store.IngestResult:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "ingest", broken)
    assert (await post(protobuf_body(spans))).status == 500


async def test_other_methods_and_paths_go_to_django(spans: list) -> None:
    assert (await post(b"", method="GET")).status == 405
    # Not the receiver's path: Django's answer (CSRF refuses an anonymous POST).
    assert (await post(protobuf_body(spans), path="/v1/traces/x")).status in (403, 404)
    assert await Span.objects.acount() == 0


async def test_spans_are_stored_on_one_thread_that_keeps_its_connection(spans: list) -> None:
    seen: list[tuple[str, int]] = []
    ingest = store.ingest

    def watched(rows: list) -> store.IngestResult:
        from django.db import connection

        result = ingest(rows)
        seen.append((threading.current_thread().name, id(connection.connection)))
        return result

    store.ingest = watched
    try:
        for n in range(3):

            def build(tracer: Tracer, n: int = n) -> None:
                agent_run(tracer, f"wf-{n}", f"run-{n}")

            assert (await post(protobuf_body(record(build)))).status == 200
    finally:
        store.ingest = ingest
    assert len(seen) == 3
    assert len({name for name, _ in seen}) == 1
    assert seen[0][0].startswith("otlp-store")
    assert len({conn for _, conn in seen}) == 1


async def test_live_pages_are_told(spans: list) -> None:
    layer = get_channel_layer()
    assert layer is not None
    channel = await layer.new_channel()
    await layer.group_add(run_group("wf-1", "run-1"), channel)
    try:
        assert (await post(protobuf_body(spans))).status == 200
        message = await asyncio.wait_for(layer.receive(channel), timeout=10)
        assert message["type"] == "run.spans"
        assert message["new_spans"] == 7
    finally:
        await layer.group_discard(run_group("wf-1", "run-1"), channel)


def test_the_fast_path_is_what_dashboard_asgi_serves() -> None:
    assert isinstance(application.application_mapping["http"], receiver_asgi.OtlpFastPath)


async def test_a_garbage_content_length_is_read_and_bounded(
    spans: list, settings: Settings
) -> None:
    body = protobuf_body(spans)
    ok = await post(body, {"content-length": "twelve"}, pieces=3)
    assert ok.status == 200
    settings.LOOMVIEW_OTLP_MAX_BODY_BYTES = len(body) - 1
    over = await post(body, {"content-length": "-5"}, pieces=3)
    assert over.status == 413
    assert await Span.objects.acount() == 7


async def test_hsts_over_https_as_the_middleware_sends_it(spans: list, settings: Settings) -> None:
    settings.SECURE_HSTS_SECONDS = 3600
    reply = await post(protobuf_body(spans), scheme="https")
    assert reply.headers["strict-transport-security"] == "max-age=3600"
    assert "strict-transport-security" not in (await post(protobuf_body(spans))).headers

import gzip
import json
import logging

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import AsyncClient, Client
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Tracer
from pytest_django.fixtures import Settings
from pytest_django.live_server_helper import LiveServer

from tests.tracing.spans import agent_run, json_body, protobuf_body, record, request_of
from tracing.groups import run_group, runs_group
from tracing.models import RunSummary, Span

PB = "application/x-protobuf"
URL = "/v1/traces"


@pytest.fixture
def spans() -> list:
    return record(lambda t: agent_run(t, failed_attempts=1))


def _status(response) -> Status:  # type: ignore[no-untyped-def]
    return Status.FromString(response.content)


@pytest.mark.django_db
def test_protobuf_export_is_stored(client: Client, spans: list) -> None:
    response = client.post(URL, protobuf_body(spans), content_type=PB)
    assert response.status_code == 200
    assert response["Content-Type"] == PB
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert not parsed.HasField("partial_success")
    assert Span.objects.count() == len(spans) == 7
    assert RunSummary.objects.get().attempts == 2


@pytest.mark.django_db
def test_json_export_is_stored(client: Client, spans: list) -> None:
    response = client.post(URL, json_body(spans), content_type="application/json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {}
    assert Span.objects.count() == 7


@pytest.mark.django_db
def test_gzip_export_is_stored(client: Client, spans: list) -> None:
    body = gzip.compress(json_body(spans))
    response = client.post(URL, body, content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 200
    assert Span.objects.count() == 7


@pytest.mark.django_db
def test_redelivery_is_stored_once(client: Client, spans: list) -> None:
    for _ in range(3):
        assert client.post(URL, protobuf_body(spans), content_type=PB).status_code == 200
    assert Span.objects.count() == 7
    assert RunSummary.objects.get().span_count == 7


@pytest.mark.django_db
def test_other_content_types_are_415(client: Client, spans: list) -> None:
    response = client.post(URL, protobuf_body(spans), content_type="text/plain")
    assert response.status_code == 415
    assert "unsupported content type 'text/plain'" in json.loads(response.content)["message"]
    response = client.post(URL, protobuf_body(spans), content_type=PB, HTTP_CONTENT_ENCODING="br")
    assert response.status_code == 415
    assert "Content-Encoding" in _status(response).message
    assert not Span.objects.exists()


@pytest.mark.django_db
def test_get_is_not_allowed(client: Client) -> None:
    assert client.get(URL).status_code == 405


@pytest.mark.django_db
def test_body_over_the_limit_is_413(client: Client, settings: Settings, spans: list) -> None:
    body = protobuf_body(spans)
    settings.LOOMVIEW_OTLP_MAX_BODY_BYTES = len(body) - 1
    response = client.post(URL, body, content_type=PB)
    assert response.status_code == 413
    assert "exceeds" in _status(response).message
    settings.LOOMVIEW_OTLP_MAX_BODY_BYTES = len(body)
    assert client.post(URL, body, content_type=PB).status_code == 200


@pytest.mark.django_db
def test_gzip_bomb_is_413(client: Client, settings: Settings) -> None:
    settings.LOOMVIEW_OTLP_MAX_BODY_BYTES = 100_000
    bomb = gzip.compress(b"\0" * 5_000_000)
    assert len(bomb) < 100_000
    response = client.post(URL, bomb, content_type=PB, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413
    assert "decompressed body exceeds 100000 bytes" in _status(response).message


@pytest.mark.django_db
def test_bodies_over_django_upload_limit_are_accepted(client: Client, settings: Settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000

    def build(tracer: Tracer) -> None:
        for i in range(10):
            agent_run(tracer, f"wf-{i}", f"run-{i}")

    spans = record(build)
    body = protobuf_body(spans)
    assert len(body) > 1_000
    assert client.post(URL, body, content_type=PB).status_code == 200
    assert Span.objects.count() == 50


@pytest.mark.django_db
def test_malformed_protobuf_is_400_and_stores_nothing(client: Client) -> None:
    response = client.post(URL, b"\xff\xff\xff\xffgarbage", content_type=PB)
    assert response.status_code == 400
    assert response["Content-Type"] == PB
    status = _status(response)
    assert status.code == 3 and "not a valid protobuf" in status.message
    assert not Span.objects.exists()


@pytest.mark.django_db
def test_malformed_json_is_400_in_json(client: Client) -> None:
    response = client.post(URL, b'{"resourceSpans": [', content_type="application/json")
    assert response.status_code == 400
    body = json.loads(response.content)
    assert body["code"] == 3 and "not valid JSON" in body["message"]
    assert not Span.objects.exists()


@pytest.mark.django_db
def test_one_bad_span_is_a_partial_success(client: Client, spans: list) -> None:
    request = request_of(spans)
    request.resource_spans[0].scope_spans[0].spans[0].span_id = bytes(8)
    response = client.post(URL, request.SerializeToString(), content_type=PB)
    assert response.status_code == 200
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_spans == 1
    assert "span_id must be 8 non-zero bytes" in partial.error_message
    assert Span.objects.count() == 6


@pytest.mark.django_db
def test_all_bad_spans_store_nothing(client: Client, spans: list) -> None:
    request = request_of(spans)
    for span in request.resource_spans[0].scope_spans[0].spans:
        span.trace_id = bytes(16)
    response = client.post(URL, request.SerializeToString(), content_type=PB)
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert response.status_code == 200 and partial.rejected_spans == 7
    assert not Span.objects.exists() and not RunSummary.objects.exists()


@pytest.mark.django_db
def test_token_is_required_when_configured(
    client: Client, settings: Settings, spans: list, caplog: pytest.LogCaptureFixture
) -> None:
    settings.LOOMVIEW_OTLP_TOKEN = "s3cret-token"
    body = protobuf_body(spans)
    caplog.set_level(logging.DEBUG)
    missing = client.post(URL, body, content_type=PB)
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"] == "Bearer"
    assert _status(missing).code == 16
    wrong = client.post(URL, body, content_type=PB, HTTP_AUTHORIZATION="Bearer s3cret-tokem")
    assert wrong.status_code == 401
    basic = client.post(URL, body, content_type=PB, HTTP_AUTHORIZATION="Basic s3cret-token")
    assert basic.status_code == 401
    assert not Span.objects.exists()
    right = client.post(URL, body, content_type=PB, HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert right.status_code == 200
    assert Span.objects.count() == 7
    assert "s3cret" not in caplog.text


@pytest.mark.django_db(transaction=True)
async def test_live_pages_are_told_about_new_spans(spans: list) -> None:
    layer = get_channel_layer()
    assert layer is not None
    run_channel = await layer.new_channel()
    runs_channel = await layer.new_channel()
    await layer.group_add(run_group("wf-1", "run-1"), run_channel)
    await layer.group_add(runs_group(), runs_channel)
    response = await AsyncClient().post(URL, protobuf_body(spans), content_type=PB)
    assert response.status_code == 200
    message = await layer.receive(run_channel)
    assert message["type"] == "run.spans"
    assert message["new_spans"] == 7
    assert message["summary"]["attempts"] == 2
    changed = await layer.receive(runs_channel)
    assert changed == {"type": "runs.changed", "runs": [{"workflow_id": "wf-1", "run_id": "run-1"}]}
    await layer.group_discard(run_group("wf-1", "run-1"), run_channel)
    await layer.group_discard(runs_group(), runs_channel)


@pytest.mark.django_db(transaction=True)
async def test_publish_failure_does_not_fail_ingest(
    spans: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = get_channel_layer()

    async def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(layer, "group_send", broken)
    response = await AsyncClient().post(URL, protobuf_body(spans), content_type=PB)
    assert response.status_code == 200
    assert await Span.objects.acount() == 7


def test_group_names_are_valid_for_any_workflow_id() -> None:
    assert run_group("wf-1", "abc") == "run.wf-1.abc"
    odd = run_group("order #42 / ü" + "x" * 200, "abc")
    assert odd.startswith("run.h.") and len(odd) < 100
    assert odd == run_group("order #42 / ü" + "x" * 200, "abc")
    assert odd != run_group("order #43 / ü" + "x" * 200, "abc")
    async_to_sync(get_channel_layer().group_add)(odd, "chan.x")  # type: ignore[union-attr]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_real_exporter_posts_to_a_live_server(
    live_server: LiveServer, settings: Settings, spans: list, compression: Compression
) -> None:
    settings.LOOMVIEW_OTLP_TOKEN = "t0ken"
    exporter = OTLPSpanExporter(
        endpoint=f"{live_server.url}/v1/traces",
        headers={"Authorization": "Bearer t0ken"},
        compression=compression,
        timeout=10,
    )
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert Span.objects.count() == 7
    assert RunSummary.objects.get().failed_attempts == 1

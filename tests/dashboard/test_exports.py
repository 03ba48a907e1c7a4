"""The Exports page, per-run export jobs and the OTLP JSON download."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from dashboard.models import AuditEntry
from tests.tracing.collector import Collector, running_collector
from tests.tracing.spans import agent_run, protobuf_body, record
from tracing import forwarder, otlp, store
from tracing.exporters import GRPC, Exporter
from tracing.models import ExportCursor, RunExport, Span

pytestmark = pytest.mark.django_db

SECRET = "hc-team-key-0123456789"


@pytest.fixture
def collector() -> Iterator[Collector]:
    with running_collector() as running:
        yield running


@pytest.fixture
def configured(settings: Settings, collector: Collector) -> list[Exporter]:
    exporters = [
        Exporter(name="tempo", endpoint=collector.url, headers={"x-honeycomb-team": SECRET}),
        Exporter(
            name="jaeger",
            endpoint="http://127.0.0.1:9",
            protocol=GRPC,
            workflow_types=("triage",),
        ),
    ]
    settings.LOOMVIEW_EXPORTERS = exporters
    return exporters


@pytest.fixture
def stored_run() -> list[dict[str, Any]]:
    rows = otlp.decode(
        protobuf_body(record(lambda t: agent_run(t, failed_attempts=1))), otlp.PROTOBUF
    )
    store.ingest(rows.rows)
    return rows.rows


def test_exports_page_lists_collectors_with_masked_headers(
    logged_in_client: Client, configured: list[Exporter], stored_run: list[dict[str, object]]
) -> None:
    ExportCursor.objects.create(
        collector="jaeger", failures=2, last_error="gRPC UNAVAILABLE: connection refused"
    )
    html = logged_in_client.get("/exports/").content.decode()
    assert 'href="/exports/"' in html and "aria-current" in html
    assert "x-honeycomb-team: ••••••" in html and SECRET not in html
    assert "gRPC UNAVAILABLE: connection refused" in html
    assert "triage" in html and "grpc" in html
    # Nothing delivered yet: every span is pending.
    row = html.split('id="collector-tempo"')[1].split("</tr>")[0]
    assert f'<td class="num">{Span.objects.count()}</td>' in row
    fragment = logged_in_client.get("/exports/", headers={"HX-Request": "true"}).content.decode()
    assert (
        fragment.lstrip().startswith('<section id="collectors"')
        and 'hx-trigger="every 2s"' in fragment
    )


def test_exports_page_requires_login(client: Client) -> None:
    assert client.get("/exports/").status_code == 302


def test_otlp_json_download_is_a_valid_export_request(
    logged_in_client: Client, stored_run: list[dict[str, object]]
) -> None:
    response = logged_in_client.get("/runs/wf-1/run-1/otlp.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert "attachment" in response["Content-Disposition"]
    document = json.loads(response.content)
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16  # hex, not base64
    rows = otlp.decode(response.content, otlp.JSON).rows
    assert {(r["trace_id"], r["span_id"]) for r in rows} == set(
        Span.objects.values_list("trace_id", "span_id")
    )
    assert logged_in_client.get("/runs/wf-1/nope/otlp.json").status_code == 404


def test_run_export_runs_in_the_background_with_progress(
    operator_client: Client,
    configured: list[Exporter],
    collector: Collector,
    stored_run: list[dict[str, object]],
) -> None:
    logged_in_client = operator_client
    response = logged_in_client.post(
        "/runs/wf-1/run-1/export/", {"collector": "tempo"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    job = RunExport.objects.get()
    assert job.status == RunExport.PENDING and collector.spans == []
    assert f'hx-get="/exports/jobs/{job.id}/"' in response.content.decode()
    forwarder.run_job(forwarder.CollectorState(configured[0]))
    job.refresh_from_db()
    assert job.status == RunExport.DONE and job.sent == job.total == Span.objects.count()
    assert len(collector.spans) == job.total
    progress = logged_in_client.get(f"/exports/jobs/{job.id}/").content.decode()
    assert "done" in progress and "every 1s" not in progress
    bad = logged_in_client.post("/runs/wf-1/run-1/export/", {"collector": "nope"})
    assert bad.status_code == 400


def test_run_export_panel_offers_the_collectors_and_the_download(
    operator_client: Client, configured: list[Exporter], stored_run: list[dict[str, Any]]
) -> None:
    html = operator_client.get("/runs/wf-1/run-1/export/panel/").content.decode()
    assert 'href="/runs/wf-1/run-1/otlp.json"' in html
    assert '<option value="tempo">' in html and '<option value="jaeger">' in html


def test_a_viewer_cannot_start_a_run_export(
    logged_in_client: Client, configured: list[Exporter], stored_run: list[dict[str, Any]]
) -> None:
    response = logged_in_client.post("/runs/wf-1/run-1/export/", {"collector": "tempo"})
    assert response.status_code == 403
    assert not RunExport.objects.exists()
    denied = AuditEntry.objects.get()
    assert (denied.action, denied.outcome, denied.run_id) == ("export", "denied", "run-1")
    html = logged_in_client.get("/runs/wf-1/run-1/export/panel/").content.decode()
    assert "needs the operator role" in html and "<select" not in html


def test_an_operators_run_export_is_audited(
    operator_client: Client, configured: list[Exporter], stored_run: list[dict[str, Any]]
) -> None:
    assert (
        operator_client.post("/runs/wf-1/run-1/export/", {"collector": "tempo"}).status_code == 302
    )
    job = RunExport.objects.get()
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.outcome, entry.username) == ("export", "ok", "otto")
    assert entry.payload == {"collector": "tempo", "job": job.id}
    operator_client.post("/runs/wf-1/run-1/export/", {"collector": "nope"})
    assert AuditEntry.objects.filter(outcome="error", action="export").count() == 1

"""The overview's numbers match the runs list filtered the same way, bar by bar."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from tests.tracing.spans import protobuf_body, record
from tests.tracing.test_rollups import BASE_NS, HOUR, fleet
from tracing import otlp, rollups, store
from tracing.models import RunRollupState

pytestmark = pytest.mark.django_db


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture
def ingested(settings: Settings) -> int:
    prices = dict(settings.LOOMVIEW_MODEL_PRICES)
    prices["unpriced-model"] = (Decimal("3"), Decimal("7"))
    settings.LOOMVIEW_MODEL_PRICES = prices
    rng = random.Random(21)
    rows = otlp.decode(
        protobuf_body(record(lambda tracer: fleet(tracer, rng, 40))), otlp.PROTOBUF
    ).rows
    store.ingest(rows)
    return len(rows)


def _api_runs(client: Client, link: str) -> list[dict[str, Any]]:
    params = parse_qs(urlparse(link).query)
    url: str | None = "/api/runs/?" + urlencode({k: v[0] for k, v in params.items()})
    rows: list[dict[str, Any]] = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        rows += body["runs"]
        url = body["next"]
    return rows


def _overview(client: Client, **params: str) -> dict[str, Any]:
    response = client.get("/overview/data.json", params)
    assert response.status_code == 200, response.content
    data: dict[str, Any] = response.json()
    return data


@pytest.mark.parametrize("hours", [6, 48])
@pytest.mark.parametrize(
    "filters",
    [{}, {"type": "triage"}, {"queue": "q-a"}, {"agent": "Billing"}, {"model": "gpt-4o-mini"}],
)
def test_every_bar_matches_the_runs_list(
    logged_in_client: Client,
    closed_temporal_address: str,
    ingested: int,
    hours: int,
    filters: dict[str, str],
) -> None:
    since = BASE_NS - HOUR
    data = _overview(
        logged_in_client,
        range="custom",
        since=_iso(since),
        until=_iso(since + hours * HOUR),
        **filters,
    )
    assert data["temporal_error"]
    runs = data["runs_by_status"]["UNKNOWN"]
    assert sum(runs) == data["totals"]["runs"] > 0
    whole = _api_runs(logged_in_client, data["runs_link"])
    assert len(whole) == data["totals"]["runs"]
    calls_are_whole_runs = not (filters.get("agent") or filters.get("model"))
    checked = 0
    for i, link in enumerate(data["links"]):
        rows = _api_runs(logged_in_client, link)
        assert len(rows) == runs[i], (i, link)
        if not calls_are_whole_runs:
            continue
        series = data["series"]
        for name in ("attempts", "failed_attempts", "tokens_in", "tokens_out"):
            assert sum(r[name] for r in rows) == series[name][i], (name, i)
        assert sum(r["model_calls"] for r in rows) == series["calls"][i]
        cost = sum(Decimal(r["estimated_cost_usd"] or 0) for r in rows)
        assert abs(float(cost) - data["cost"][i]) < 1e-5
        checked += bool(rows)
    assert checked or not calls_are_whole_runs
    # The slowest and most expensive runs are the runs list's, in order.
    by_duration = sorted(whole, key=lambda r: -r["duration_ms"])
    assert data["slowest"][0]["duration_ms"] == by_duration[0]["duration_ms"]
    assert {r["workflow_id"] for r in data["slowest"]} <= {r["workflow_id"] for r in whole}
    by_cost = sorted(whole, key=lambda r: -Decimal(r["estimated_cost_usd"] or 0))
    assert data["expensive"][0]["workflow_id"] == by_cost[0]["workflow_id"]
    if calls_are_whole_runs:
        assert sum(f["count"] for f in data["failures"]) == data["totals"]["failed_attempts"]
        assert data["totals"]["failed_attempts"] == sum(r["failed_attempts"] for r in whole)


def test_agent_and_model_breakdowns_add_up(
    logged_in_client: Client, closed_temporal_address: str, ingested: int
) -> None:
    data = _overview(
        logged_in_client, range="custom", since=_iso(BASE_NS), until=_iso(BASE_NS + 6 * HOUR)
    )
    totals = data["totals"]
    for breakdown in ("by_model", "by_agent", "by_type"):
        rows = data[breakdown]
        assert sum(r["attempts"] for r in rows) == totals["attempts"]
        assert sum(r["failed_tokens_in"] for r in rows) == totals["failed_tokens_in"]
        assert abs(sum(r["cost"] for r in rows) - totals["cost"]) < 1e-5
        assert abs(sum(r["failed_cost"] for r in rows) - totals["failed_cost"]) < 1e-5
    assert 0 < totals["failed_cost"] < totals["cost"]
    model = next(r for r in data["by_model"] if r["name"] == "gpt-4o-mini")
    only = _overview(
        logged_in_client,
        range="custom",
        since=_iso(BASE_NS),
        until=_iso(BASE_NS + 6 * HOUR),
        model="gpt-4o-mini",
    )
    assert only["totals"]["attempts"] == model["attempts"]
    assert only["totals"]["tokens_in"] == model["tokens_in"]


def test_status_filter_follows_temporal_statuses(
    logged_in_client: Client, closed_temporal_address: str, ingested: int
) -> None:
    keys = list(RunRollupState.objects.values_list("workflow_id", "run_id")[:3])
    rollups.set_status({k: ("FAILED", None) for k in keys})
    window = {"range": "custom", "since": _iso(BASE_NS), "until": _iso(BASE_NS + 6 * HOUR)}
    failed = _overview(logged_in_client, status="FAILED", **window)
    assert failed["totals"]["runs"] == 3
    assert list(failed["runs_by_status"]) == ["FAILED"]
    everything = _overview(logged_in_client, **window)
    assert sum(everything["runs_by_status"]["FAILED"]) == 3
    assert sum(everything["runs_by_status"]["UNKNOWN"]) == everything["totals"]["runs"] - 3


def test_page_renders_with_its_data_and_a_bad_range_is_a_form_error(
    logged_in_client: Client, closed_temporal_address: str, ingested: int
) -> None:
    response = logged_in_client.get("/overview/", {"range": "7d"})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="overview-data"' in html and "js/overview.js" in html and "<script>" not in html
    assert "Temporal is unreachable" in html
    bad = logged_in_client.get("/overview/", {"range": "custom", "until": "not a time"})
    assert bad.status_code == 400
    assert "filter-errors" in bad.content.decode()
    assert logged_in_client.get("/overview/data.json", {"range": "nope"}).status_code == 400


def test_overview_needs_a_login(client: Client) -> None:
    assert client.get("/overview/").status_code == 302
    assert client.get("/overview/data.json").status_code == 302


def test_metrics_in_prometheus_text_format(
    client: Client, settings: Settings, closed_temporal_address: str, ingested: int
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert client.get("/metrics").status_code == 401
    settings.LOOMVIEW_METRICS_TOKEN = "scrape-me"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }
    assert samples[("loomview_runs", (("status", "UNKNOWN"),))] == 40
    states = list(RunRollupState.objects.all())
    attempts = sum(len(per_call) for s in states for per_call in s.facts["a"].values())
    by_model = sum(v for (name, _), v in samples.items() if name == "loomview_model_attempts")
    assert by_model == attempts
    tokens = sum(
        v
        for (name, labels), v in samples.items()
        if name == "loomview_tokens" and ("direction", "in") in labels
    )
    from tracing.models import RunSummary

    assert tokens == sum(s.tokens_in for s in RunSummary.objects.all())
    assert ("loomview_ingest_seconds_count", ()) in samples


def test_receiver_counts_spans_for_metrics(client: Client, settings: Settings) -> None:
    from tracing import metrics

    before = metrics.SPANS_STORED._value.get()
    rng = random.Random(3)
    body = protobuf_body(record(lambda tracer: fleet(tracer, rng, 1)))
    response = client.post("/v1/traces", body, content_type="application/x-protobuf")
    assert response.status_code == 200
    stored = metrics.SPANS_STORED._value.get() - before
    assert stored == len(otlp.decode(body, otlp.PROTOBUF).rows) > 0


def _window() -> dict[str, str]:
    return {"range": "custom", "since": _iso(BASE_NS - HOUR), "until": _iso(BASE_NS + 48 * HOUR)}


@pytest.mark.parametrize(
    "params",
    [
        {"range": "custom", "since": _iso(BASE_NS), "until": _iso(BASE_NS + HOUR)},  # per minute
        {"range": "custom", "since": _iso(BASE_NS), "until": _iso(BASE_NS + 6 * HOUR)},
        {**_window(), "agent": "Billing", "model": "gpt-4o-mini", "status": "UNKNOWN"},
        {"range": "30d"},
    ],
)
def test_charts_read_the_rollups_and_never_the_span_table(
    logged_in_client: Client,
    closed_temporal_address: str,
    ingested: int,
    params: dict[str, str],
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for url in ("/overview/data.json", "/overview/"):
        with CaptureQueriesContext(connection) as captured:
            assert logged_in_client.get(url, params).status_code == 200
        tables = {
            name
            for query in captured.captured_queries
            for name in re.findall(r'(?:FROM|JOIN)\s+"?(\w+)"?', query["sql"], re.IGNORECASE)
        }
        assert tables <= {
            "tracing_rollup",
            "tracing_failurerollup",
            "tracing_runrollupstate",
            "json_each",
            "django_session",
            "auth_user",
        }, tables
        assert "tracing_runrollupstate" in tables
        assert not [q for q in captured.captured_queries if "tracing_span" in q["sql"]]
        # A handful of queries whatever the data: none per bar, run or model.
        reads = [q for q in captured.captured_queries if q["sql"].lstrip().startswith("SELECT")]
        assert len(reads) <= 8


def test_an_unknown_status_bar_lists_its_runs_without_a_form_error(
    logged_in_client: Client, closed_temporal_address: str, ingested: int
) -> None:
    keys = list(RunRollupState.objects.values_list("workflow_id", "run_id")[:4])
    rollups.set_status({k: ("COMPLETED", None) for k in keys})
    data = _overview(logged_in_client, **_window())
    unknown = data["runs_by_status"]["UNKNOWN"]
    assert sum(unknown) == data["totals"]["runs"] - 4 > 0
    checked = 0
    for i, link in enumerate(data["status_links"]["UNKNOWN"]):
        assert "status=UNKNOWN" in link
        if not unknown[i]:
            continue
        page = logged_in_client.get(link)
        assert page.status_code == 200
        html = page.content.decode()
        assert "filter-errors" not in html
        assert html.count('class="run-row') == unknown[i]
        rows = _api_runs(logged_in_client, link)
        assert len(rows) == unknown[i]
        assert not {(r["workflow_id"], r["run_id"]) for r in rows} & set(keys)
        checked += 1
    assert checked
    # The runs list's own status menu offers it too.
    html = logged_in_client.get("/", {"status": "UNKNOWN"}).content.decode()
    assert 'value="UNKNOWN" selected' in html and "filter-errors" not in html


def test_a_failure_message_links_to_the_runs_that_failed_with_it(
    logged_in_client: Client, closed_temporal_address: str, ingested: int
) -> None:
    data = _overview(logged_in_client, **_window())
    assert {f["message"] for f in data["failures"]} >= {"503 overloaded", "rate limited"}
    # A failure without a message is counted under its span's name.
    assert any(f["message"].endswith(" failed") for f in data["failures"])
    states = list(RunRollupState.objects.all())
    for failure in data["failures"]:
        expected: dict[tuple[str, str], int] = {}
        for s in states:
            n = sum(
                1
                for per_call in s.facts["a"].values()
                for entry in per_call.values()
                if entry[2] == 1 and entry[7] == failure["message"]
            )
            if n:
                expected[(s.workflow_id, s.run_id)] = n
        assert sum(expected.values()) == failure["count"]
        assert "failure=" in failure["link"]
        rows = _api_runs(logged_in_client, failure["link"])
        assert {(r["workflow_id"], r["run_id"]) for r in rows} == set(expected)
        html = logged_in_client.get(failure["link"]).content.decode()
        assert "filter-errors" not in html and 'name="failure"' in html


def test_rebuild_command_recounts_what_ingest_kept(
    closed_temporal_address: str, ingested: int
) -> None:
    from io import StringIO

    from django.core.management import call_command

    from tracing.models import FailureRollup, Rollup

    keys = list(RunRollupState.objects.values_list("workflow_id", "run_id")[:2])
    rollups.set_status({k: ("FAILED", 1) for k in keys})
    kept = rollups.stored_rollups()
    # Damage the rollups the way a crash, a restore or LOOMVIEW_ROLLUPS=off would.
    Rollup.objects.filter(pk__in=list(Rollup.objects.values_list("pk", flat=True)[:5])).delete()
    Rollup.objects.update(runs=7)
    FailureRollup.objects.all().delete()
    RunRollupState.objects.exclude(workflow_id=keys[0][0]).update(cost=None)
    assert rollups.stored_rollups() != kept
    out, err = StringIO(), StringIO()
    call_command("rebuild_rollups", stdout=out, stderr=err)
    assert "rollups rebuilt: 40 runs" in out.getvalue()
    assert "statuses not updated" in err.getvalue()  # Temporal is unreachable
    assert rollups.stored_rollups() == kept
    _, recounted = rollups.recount()
    assert rollups.stored_rollups() == rollups.widen(recounted)
    # The statuses Temporal gave survive the rebuild.
    assert {
        (s.workflow_id, s.run_id)
        for s in RunRollupState.objects.filter(status="FAILED", close_ns=1)
    } == set(keys)
    assert not RunRollupState.objects.filter(cost__isnull=True).exists()

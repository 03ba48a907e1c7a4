import asyncio
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import Client
from temporalio.client import Client as TemporalClient
from temporalio.service import RPCError

from dashboard import runs as run_list
from dashboard import temporal
from dashboard.models import ApiToken, hash_token
from tests.dashboard.runs_data import T0, FakeVisibility, model_span, summary, visible
from tracing import pricing
from tracing.models import RunSummary

pytestmark = pytest.mark.django_db

XSS = "<script>alert(1)</script>"


def rows_of(body: str) -> list[str]:
    """Workflow ids of the rows on a page, in order."""
    return re.findall(r'<td class="mono wf-id">\s*<(?:a|span)[^>]*>([^<]*)<', body)


def test_unreachable_temporal_shows_banner_and_the_store(
    logged_in_client: Client, closed_temporal_address: str
) -> None:
    summary("stored-run", last_error="model said no")
    response = logged_in_client.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    assert f"Temporal is unreachable at {closed_temporal_address}" in body
    assert rows_of(body) == ["stored-run"]
    assert "Unknown" in body
    assert "model said no" in body


def test_untrusted_text_is_escaped(logged_in_client: Client, closed_temporal_address: str) -> None:
    summary(f"wf-{XSS}", agents=[f"agent{XSS}"], last_error=f"boom {XSS}", workflow_type=XSS)
    body = logged_in_client.get("/").content.decode()
    assert XSS not in body
    assert "wf-&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "agent&lt;script&gt;" in body
    assert "boom &lt;script&gt;" in body


def test_merges_visibility_and_store(
    logged_in_client: Client, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.LOOMVIEW_MODEL_PRICES = pricing.load_prices('{"m": [1000000, 2000000]}')
    fake = FakeVisibility(
        [
            visible("only-temporal", start_ns=T0 + 3_000_000_000, status="RUNNING"),
            visible("both", start_ns=T0 + 2_000_000_000, status="FAILED", close_ns=T0 + 9 * 10**9),
        ]
    )
    monkeypatch.setattr(temporal, "list_runs", fake)
    summary("both", start_ns=T0 + 2_000_000_100, tokens_in=3, tokens_out=1)
    model_span("both", "r1", "m", 3, 1)
    summary("only-store", start_ns=T0 + 1_000_000_000)

    page = async_to_sync(run_list.list_page)(run_list.Filters())
    assert [r.workflow_id for r in page.rows] == ["only-temporal", "both", "only-store"]
    only_temporal, both, only_store = page.rows
    assert (only_temporal.in_temporal, only_temporal.has_spans) == (True, False)
    assert (both.status, both.tokens_in, both.retries) == ("FAILED", 3, 1)
    assert both.start_ns == T0 + 2_000_000_000  # Temporal's start wins over the first span
    assert both.duration_ns == 7_000_000_000
    assert both.cost == Decimal(5)  # 3 * $1 + 1 * $2
    assert (only_store.status, only_store.in_temporal) == ("UNKNOWN", False)
    assert only_store.cost is None  # no priced spans

    body = logged_in_client.get("/").content.decode()
    assert rows_of(body) == ["only-temporal", "both", "only-store"]
    assert "/runs/both/r1/" in body
    assert "$5.00" in body


def test_filters_combine_and_show_in_the_url_form(
    logged_in_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        temporal,
        "list_runs",
        FakeVisibility([visible("a-approval", workflow_type="approval", status="COMPLETED")]),
    )
    summary("a-triage-1", agents=["Triage Agent", "Billing Agent"], last_error="rate limited")
    summary("a-triage-2", start_ns=T0 - 10, agents=["Triage Agent"])
    summary("a-approval", workflow_type="approval", agents=["Approver"])

    def ids(query: str) -> list[str]:
        response = logged_in_client.get("/?" + query)
        assert response.status_code == 200
        return rows_of(response.content.decode())

    assert ids("") == ["a-triage-1", "a-approval", "a-triage-2"]
    assert ids("type=triage") == ["a-triage-1", "a-triage-2"]
    assert ids("type=triage&agent=billing+agent") == ["a-triage-1"]
    assert ids("q=RATE") == ["a-triage-1"]
    assert ids("q=triage-2") == ["a-triage-2"]
    assert ids("status=COMPLETED") == ["a-approval"]
    assert ids("status=COMPLETED&type=triage") == []
    assert ids("range=custom&until=2020-01-01T00:00") == []
    assert ids("range=1h") == []  # T0 is in 2026
    body = logged_in_client.get("/?type=triage&q=rate").content.decode()
    assert 'value="triage"' in body and 'value="rate"' in body


def test_visibility_query_from_filters() -> None:
    filters = run_list.Filters(status="TIMED_OUT", workflow_type="it's", since_ns=T0)
    query = run_list.visibility_query(filters, cursor=(T0 + 5, "w", "r"))
    assert query == (
        "ExecutionStatus = 'TimedOut' AND WorkflowType = 'it\\'s' AND "
        "StartTime >= '2026-05-28T20:26:40.000000Z' AND StartTime <= '2026-05-28T20:26:40.000001Z'"
    )


def test_bad_filter_shows_error_page_200_fragment_400(
    logged_in_client: Client, closed_temporal_address: str
) -> None:
    summary("still-listed")
    page = logged_in_client.get("/?status=EXPLODED&since=yesterday")
    assert page.status_code == 200
    body = page.content.decode()
    assert "Some filters were not applied" in body
    assert "EXPLODED is not one of the available choices" in body
    assert rows_of(body) == ["still-listed"]

    fragment = logged_in_client.get("/?cursor=%%%", headers={"HX-Request": "true"})
    assert fragment.status_code == 400
    body = fragment.content.decode()
    assert body.lstrip().startswith('<section id="runs-panel"')
    assert "This page link is broken" in body

    api = logged_in_client.get("/api/runs/?range=forever")
    assert api.status_code == 400
    assert "range" in api.json()["errors"]


def test_htmx_request_returns_only_the_panel(
    logged_in_client: Client, closed_temporal_address: str
) -> None:
    response = logged_in_client.get("/?type=x", headers={"HX-Request": "true"})
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="runs-panel"')
    assert "<html" not in body
    assert 'ws-connect="/ws/runs/?type=x&amp;rendered=' in body


def _walk(client: Client, url: str) -> list[str]:
    seen: list[str] = []
    for _ in range(20):
        body = client.get(url).content.decode()
        seen += rows_of(body)
        match = re.search(r'<a class="btn" href="([^"]+)"[^>]*rel="next"', body)
        if not match:
            return seen
        url = match.group(1).replace("&amp;", "&")
    raise AssertionError("pagination did not end")


def test_keyset_pagination_with_equal_start_times(
    logged_in_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 130 stored runs on 3 distinct start times, plus 10 runs only Temporal knows
    # that share those times: no row twice, none missing, newest first.
    expected: list[tuple[int, str, str]] = []
    for i in range(130):
        start = T0 + (i % 3) * 1000
        summary(f"wf-{i:03d}", run_id=f"r{i % 2}", start_ns=start)
        expected.append((start, f"wf-{i:03d}", f"r{i % 2}"))
    extra = [visible(f"vis-{i}", start_ns=T0 + (i % 3) * 1000) for i in range(10)]
    expected += [(T0 + (i % 3) * 1000, f"vis-{i}", "r1") for i in range(10)]
    monkeypatch.setattr(temporal, "list_runs", FakeVisibility(extra))

    seen = _walk(logged_in_client, "/")
    assert len(seen) == len(set(seen)) == 140
    assert seen == [w for _, w, _ in sorted(expected, reverse=True)]
    # The same with a filter on.
    filtered = _walk(logged_in_client, "/?q=wf-1")
    assert filtered == [w for _, w, _ in sorted(expected, reverse=True) if "wf-1" in w]


def test_cursor_round_trip() -> None:
    key = (T0, "wf/ü'\"", "run")
    assert run_list.decode_cursor(run_list.encode_cursor(key)) == key
    with pytest.raises(ValueError):
        run_list.decode_cursor("bm90IGpzb24")


def test_api_requires_session_or_token(
    client: Client, user: User, closed_temporal_address: str
) -> None:
    summary("api-run", agents=["A"])
    anonymous = client.get("/api/runs/")
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/api/runs/", headers={"Authorization": "Bearer lv_wrong"}).status_code == 401

    token, raw = ApiToken.issue(user, "ci")
    response = client.get("/api/runs/?agent=A", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200
    data = response.json()
    assert [r["workflow_id"] for r in data["runs"]] == ["api-run"]
    assert data["runs"][0]["retried_attempts"] == 1
    assert data["next"] is None
    assert data["temporal_error"]
    token.refresh_from_db()
    assert token.last_used is not None

    client.force_login(user)
    assert client.get("/api/runs/").status_code == 200


def test_api_next_link_pages(logged_in_client: Client, closed_temporal_address: str) -> None:
    for i in range(55):
        summary(f"p-{i:02d}", start_ns=T0 + i)
    first = logged_in_client.get("/api/runs/?type=triage").json()
    assert len(first["runs"]) == 50
    assert first["next"].startswith("http://testserver/api/runs/?type=triage&cursor=")
    second = logged_in_client.get(first["next"]).json()
    assert [r["workflow_id"] for r in second["runs"]] == [f"p-{i:02d}" for i in range(4, -1, -1)]
    assert second["next"] is None


def test_create_api_token_prints_once_and_stores_a_digest(user: User) -> None:
    out, err = StringIO(), StringIO()
    call_command("create_api_token", "ada", "grafana", stdout=out, stderr=err)
    raw = out.getvalue().strip()
    assert raw.startswith("lv_") and len(raw) > 40
    stored = ApiToken.objects.get(user=user, name="grafana")
    assert stored.token_hash == hash_token(raw)
    assert raw not in stored.token_hash
    with pytest.raises(Exception, match="already has a token"):
        call_command("create_api_token", "ada", "grafana", stdout=StringIO(), stderr=StringIO())


def test_prices_defaults_override_and_unknown_model() -> None:
    prices = pricing.load_prices('{"gpt-4o": {"input": 5, "output": 15}, "local": [0, 0]}')
    assert prices["gpt-4o"] == (Decimal(5), Decimal(15))
    assert prices["loomview-demo-1"] == pricing.DEFAULT_PRICES["loomview-demo-1"]
    assert pricing.estimate({"local": (10, 10)}, prices) == 0
    assert pricing.estimate({"gpt-4o": (1_000_000, 0), "mystery": (1, 1)}, prices) is None
    for bad in ("[1, 2]", "{bad", '{"x": [1]}', '{"x": ["a", 1]}', '{"x": [-1, 1]}'):
        with pytest.raises(ImproperlyConfigured, match="LOOMVIEW_MODEL_PRICES"):
            pricing.load_prices(bad)


def test_connect_config_defaults_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEMPORAL_ADDRESS", raising=False)
    monkeypatch.delenv("TEMPORAL_NAMESPACE", raising=False)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", "/nonexistent/temporal.toml")
    assert temporal.target() == ("localhost:7233", "default")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "agents")
    assert temporal.target() == ("temporal.internal:7233", "agents")


async def test_list_recent_runs_raises_unavailable_quickly(closed_temporal_address: str) -> None:
    with pytest.raises(temporal.TemporalUnavailable) as excinfo:
        await temporal.list_recent_runs()
    assert excinfo.value.address == closed_temporal_address


def test_runs_page_lists_workflows_from_a_real_temporal_server(
    logged_in_client: Client, temporal_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflow_id = f"dashboard-probe-{uuid.uuid4().hex[:8]}"

    async def start_probe() -> None:
        # No worker polls this queue, so the run stays Running for the test.
        client = await TemporalClient.connect(temporal_server.address)
        for attempt in range(50):
            try:
                await client.start_workflow(
                    "DashboardProbe", id=workflow_id, task_queue=f"nobody-{workflow_id}"
                )
                return
            except RPCError:
                # A freshly started dev server may not have its namespace ready yet.
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)

    before = datetime.now(UTC)
    asyncio.run(start_probe())
    after = datetime.now(UTC)
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")

    deadline = time.monotonic() + 10
    body = ""
    while workflow_id not in body and time.monotonic() < deadline:
        response = logged_in_client.get("/?status=RUNNING&type=DashboardProbe&range=1h")
        assert response.status_code == 200
        body = response.content.decode()
        time.sleep(0.2)
    assert workflow_id in body
    assert "DashboardProbe" in body
    assert "Running" in body
    assert "Temporal is unreachable" not in body
    # The row's start time is the one Temporal recorded for this run.
    row = next(part for part in body.split("<tr") if workflow_id in part)
    shown = re.search(r'<time datetime="([^"]+)"', row)
    assert shown is not None
    started = datetime.fromisoformat(shown.group(1))
    assert before - timedelta(seconds=1) <= started <= after + timedelta(seconds=1)
    # A type with a quote in it is a valid, escaped query, not an error.
    body = logged_in_client.get("/?type=it's").content.decode()
    assert "visibility query rejected" not in body
    assert "Temporal is unreachable" not in body


async def test_unknown_namespace_is_reported_not_raised(
    temporal_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", f"missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(temporal.TemporalUnavailable) as excinfo:
        await temporal.list_recent_runs()
    assert excinfo.value.address == temporal_server.address
    assert "not found" in excinfo.value.reason.lower()


@pytest.mark.parametrize("window", [1, 4, 40, 5000])
def test_a_search_reads_the_newest_summaries_first_and_pages_the_same(
    window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 60 runs on 4 start times, two of three with a matching error, plus runs
    # found only by what their agents said: every window size pages them alike.
    expected: list[tuple[int, str, str]] = []
    said: set[tuple[str, str]] = set()
    for i in range(60):
        start, run_id = T0 + (i % 4) * 1000, f"r{i % 2}"
        summary(f"wf-{i:03d}", run_id=run_id, start_ns=start, last_error="x" if i % 3 else "")
        if i % 3 or i % 9 == 0:
            expected.append((start, f"wf-{i:03d}", run_id))
        if i % 9 == 0:
            said.add((f"wf-{i:03d}", run_id))
    monkeypatch.setattr(run_list, "SEARCH_WINDOW", window)
    filters = run_list.Filters(text="X", text_runs=frozenset(said))
    seen: list[tuple[int, str, str]] = []
    cursor = None
    for _ in range(100):
        page = run_list._store_page(filters, cursor, 5)
        seen += [(s.first_span_ns or 0, s.workflow_id, s.run_id) for s in page]
        if len(page) < 5:
            break
        cursor = seen[-1]
    assert seen == sorted(expected, reverse=True)


def test_a_search_with_a_common_word_reads_only_the_newest_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for i in range(30):
        summary(f"wf-{i:03d}", start_ns=T0 + i, last_error="rate limited")
    monkeypatch.setattr(run_list, "SEARCH_WINDOW", 10)
    with CaptureQueriesContext(connection) as captured:
        page = run_list._store_page(run_list.Filters(text="rate"), None, 5)
    assert [s.workflow_id for s in page] == [f"wf-{i:03d}" for i in range(29, 24, -1)]
    # The window's edge, then the page within it: the whole table is never searched.
    assert len(captured.captured_queries) == 2
    assert 'first_span_ns" >= ' in captured.captured_queries[-1]["sql"]


def test_runs_found_by_what_their_agents_said_are_one_lookup() -> None:
    keys = set()
    for i in range(300):
        summary(f"wf-{i:03d}", run_id=f"r{i % 3}")
        keys.add((f"wf-{i:03d}", f"r{i % 3}"))
    summary("wf-000", run_id="r1")  # a run of a found workflow, not found itself
    ids = run_list._summary_ids(frozenset(keys | {("nowhere", "r1")}))
    found = set(RunSummary.objects.filter(id__in=ids).values_list("workflow_id", "run_id"))
    assert found == keys


def _plans_of_store_page(filters: run_list.Filters, cursor: Any = None) -> list[str]:
    """The plan of each query _store_page runs (EXPLAIN on PostgreSQL, EXPLAIN QUERY
    PLAN on SQLite), as text."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        run_list._store_page(filters, cursor, run_list.PAGE_SIZE + 1)
    plans = []
    for query in captured.captured_queries:
        explain = "EXPLAIN " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN "
        with connection.cursor() as cursor_:
            cursor_.execute(explain + query["sql"])
            plans.append("\n".join(str(row[-1]) for row in cursor_.fetchall()))
    return plans


def test_runs_list_pages_walk_the_list_indexes(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connection

    # A search window a small part of the table, as 5,000 is of a real one.
    monkeypatch.setattr(run_list, "SEARCH_WINDOW", 200)
    RunSummary.objects.bulk_create(
        RunSummary(
            workflow_id=f"{kind}-{i:05d}",
            run_id=f"r{i}",
            workflow_type=kind,
            first_span_ns=T0 + (i % 997) * 10**9,
            last_span_ns=T0 + (i % 997) * 10**9,
            last_error="rate limited" if i % 3 else "",
            agents=["Triage Agent"],
            model_attempts={},
        )
        for i in range(4000)
        for kind in ["triage" if i % 2 else "approval"]
    )
    with connection.cursor() as db:
        db.execute("ANALYZE")
    cursor_key = (T0 + 500 * 10**9, "triage-00500", "r500")
    key: tuple[int, str, str] | None
    for filters, key, index in [
        (run_list.Filters(), None, "runsummary_list_order"),
        (run_list.Filters(), cursor_key, "runsummary_list_order"),
        (run_list.Filters(workflow_type="triage"), None, "runsummary_list_type"),
        (run_list.Filters(workflow_type="triage"), cursor_key, "runsummary_list_type"),
        (run_list.Filters(text="rate"), None, "runsummary_list_order"),
    ]:
        plans = _plans_of_store_page(filters, key)
        for plan in plans:
            # Read in list order from the index, never sorted or scanned whole.
            assert index in plan, (filters, plan)
            assert "Seq Scan" not in plan and "TEMP B-TREE" not in plan, (filters, plan)
            if not filters.text:
                assert "Sort" not in plan, (filters, plan)
        if filters.text:
            # The edge of the window, then the matches within it (a bounded range of
            # the index, whose few matches may be sorted): never the whole table.
            assert len(plans) == 2
            assert "first_span_ns>" in plans[1].replace(" ", ""), plans[1]


# Queries of one runs list page with Temporal unreachable: the session and user,
# the page of summaries, the rows' costs, runs per workflow, two lineage reads; a
# search adds the index's catch-up, its matches, their summaries' ids, the
# window's edge and the snippets.
RUNS_PAGE_MAX_QUERIES = 10
SEARCH_PAGE_MAX_QUERIES = 16


@pytest.mark.parametrize(
    ("url", "most"),
    [
        ("/", RUNS_PAGE_MAX_QUERIES),
        ("/?type=triage", RUNS_PAGE_MAX_QUERIES),
        ("/api/runs/", RUNS_PAGE_MAX_QUERIES),
        ("/?q=wf", SEARCH_PAGE_MAX_QUERIES),
    ],
)
def test_a_runs_list_page_makes_the_same_few_queries_for_3_rows_or_50(
    logged_in_client: Client, closed_temporal_address: str, url: str, most: int
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert logged_in_client.get(url).status_code == 200
        # Reads and writes; not the transactions' own statements (BEGIN, SAVEPOINT...).
        verbs = ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE")
        return sum(q["sql"].lstrip().upper().startswith(verbs) for q in captured.captured_queries)

    for i in range(3):
        summary(f"wf-{i:03d}", start_ns=T0 + i)
        model_span(f"wf-{i:03d}", "r1", "gpt-4o", 100, 10)
    few = queries()
    for i in range(3, 60):
        summary(f"wf-{i:03d}", start_ns=T0 + i)
        model_span(f"wf-{i:03d}", "r1", "gpt-4o", 100, 10)
    many = queries()
    assert many == few <= most, (few, many)

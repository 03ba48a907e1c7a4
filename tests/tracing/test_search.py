"""Search over what the agents said (SQLite FTS5, kept by triggers on the span table)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client

from tests.dashboard.run_fixtures import recorded, store_spans
from tracing import search
from tracing.models import RunSummary, Span

pytestmark = pytest.mark.django_db


def indexed() -> int:
    """Rows in this database's search index."""
    table = "tracing_spantext" if connection.vendor == "sqlite" else "tracing_spanwords"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return int(cursor.fetchone()[0])


@pytest.fixture
def run() -> tuple[str, str]:
    data = recorded()
    store_spans(data)
    return data["workflow_id"], data["run_id"]


@pytest.fixture
def index_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The index answers: a fallback to scanning the rows fails the test."""

    def scan(text: str) -> None:
        raise AssertionError(f"scanned the rows for {text!r}: the index did not answer")

    monkeypatch.setattr(search, "_scan", scan)


def test_prompts_outputs_tool_arguments_and_errors_are_found(
    run: tuple[str, str], index_only: None
) -> None:
    # The user's prompt, words of the answer, a tool's name and arguments, an injected error.
    for text in (
        "dashboard sync",
        "DASHBOARD Sync stuck",
        "technical support engineer",
        "check_service_status",
        "eu-west-1",
        "InjectedModelFault",
        "overload",  # a word prefix
    ):
        assert search.matching_runs(text) == {run}, text
    assert search.matching_runs("dashboard zanzibar") == set()  # every word must match
    assert search.matching_runs("") == set()
    spans = search.matching_spans("check_service_status", *run)
    assert spans and spans <= set(Span.objects.values_list("span_id", flat=True))
    assert search.matching_spans("check_service_status", run[0], "another-run") == set()


@pytest.mark.parametrize(
    "text", ['"', "*", "NEAR(a b)", "a OR b", "dashboard AND", "^sync", "-x", "col:value", "'"]
)
def test_query_syntax_in_the_search_is_only_text(
    run: tuple[str, str], text: str, index_only: None
) -> None:
    search.matching_runs(text)  # no error from the FTS5 parser
    search.matching_spans(text, *run)


def test_every_span_is_indexed_and_deleted_spans_leave_the_index(
    run: tuple[str, str],
) -> None:
    # Indexed behind the receiver: nothing at first, then every span in one round.
    assert indexed() == 0
    assert search.index_pending() == Span.objects.count()
    assert search.index_pending() == 0
    assert indexed() == Span.objects.count() > 0
    Span.objects.filter(workflow_id=run[0], run_id=run[1]).delete()
    assert indexed() == 0
    assert search.matching_runs("dashboard") == set()


def test_a_changed_span_is_indexed_again(run: tuple[str, str]) -> None:
    span = Span.objects.filter(kind="function").first()
    assert span is not None
    assert search.matching_spans("quokka", *run) == set()  # indexes the run's spans
    span.status_message = "quokka overflow"
    span.save()
    assert search.matching_spans("quokka", *run) == {span.span_id}


def test_the_runs_list_finds_a_run_by_a_word_of_its_prompt(
    admin_client: Client, run: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard import temporal

    async def unreachable(*args: object, **kwargs: object) -> None:
        raise temporal.TemporalUnavailable("127.0.0.1:1", "down for the test")

    first = min(Span.objects.values_list("start_ns", flat=True))
    RunSummary.objects.create(workflow_id=run[0], run_id=run[1], first_span_ns=first)
    monkeypatch.setattr(temporal, "list_runs", unreachable)
    monkeypatch.setattr(temporal, "check_connection", unreachable)
    body = admin_client.get("/", {"q": "stuck"}).content.decode()
    assert f"/runs/{run[0]}/{run[1]}/?q=stuck" in body
    # Where the word was found, marked, under the workflow id.
    snippet = body.split('data-match title="')[1].split("</div>")[0]
    assert "sync is <mark>stuck</mark> and the app" in snippet
    body = admin_client.get("/", {"q": "zanzibar"}).content.decode()
    assert f"/runs/{run[0]}/{run[1]}/" not in body


def test_without_the_index_the_newest_spans_are_scanned(
    run: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What other databases do (neither SQLite's FTS5 nor PostgreSQL's index).
    monkeypatch.setattr(search, "_fts", lambda: False)
    monkeypatch.setattr(search, "_pg", lambda: False)
    assert search.matching_runs("dashboard sync") == {run}
    assert search.matching_runs("InjectedModelFault") == {run}
    assert search.matching_runs("dashboard zanzibar") == set()
    assert search.matching_spans("check_service_status", *run)
    monkeypatch.setattr(search, "SCAN_SPANS", 0)
    assert search.matching_runs("dashboard sync") == set()


def test_indexing_goes_in_batches_and_stops_at_its_limit(
    run: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "INDEX_BATCH", 7)
    total = Span.objects.count()
    assert search.index_pending(limit=10) == 10
    assert search.index_pending() == total - 10
    assert search.matching_runs("dashboard sync") == {run}


def test_snippets_show_where_the_words_were_found_without_the_json_around_them(
    run: tuple[str, str],
) -> None:
    found = search.snippets("eu-west-1 latency", {run})
    before, word, after = found[run]
    assert word.lower() == "eu" and "west" in after and '"' not in before + after
    assert search.snippets("zanzibar", {run}) == {}
    assert search.snippets("", {run}) == {}
    text = '[{"role":"user","content":"My <b>kumquat</b> order"}] ' + "x " * 200
    before, word, after = search._snippet(text, "kumquat") or ("", "", "")
    assert (before, word) == ("My <b>", "kumquat") and after.startswith("</b> order")
    assert after.endswith("…")


def test_the_migration_trigger_indexes_what_the_receiver_path_indexes() -> None:
    """Migration 0010 keeps a frozen copy of the indexed-text SQL (migrations never
    import app code); while no later migration replaces its trigger, the two agree."""
    import importlib

    migration = importlib.import_module("tracing.migrations.0010_span_text_search")
    assert " ".join(migration.BODY_SQL.split()) == " ".join(search.BODY_SQL.split())


def test_the_postgres_migration_indexes_what_the_receiver_path_indexes() -> None:
    import importlib

    migration = importlib.import_module("tracing.migrations.0011_span_text_search_postgres")
    assert " ".join(migration.BODY_PG.split()) == " ".join(search.BODY_PG.split())


def test_spans_that_commit_out_of_id_order_are_indexed_too(run: tuple[str, str]) -> None:
    """Several receivers: a span with a lower id can commit after higher ids were
    indexed. Each round looks back for spans without an index row."""
    assert search.index_pending() == Span.objects.count()
    late = Span.objects.order_by("id").first()
    assert late is not None
    table, key = (
        ("tracing_spantext", "rowid") if connection.vendor == "sqlite" else
        ("tracing_spanwords", "span_id")
    )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE {key} = %s", [late.id])
    if connection.vendor == "sqlite":
        # SQLite has one writer: ids commit in order, and its index never looks back.
        assert search.index_pending() == 0
        return
    # A search catches up only above the newest span indexed (the look back costs
    # ~20 ms at 1M spans); the maintenance round finds the late one.
    assert search.index_pending(lookback=0) == 0
    search.matching_runs(late.name or "agent")
    assert indexed() == Span.objects.count() - 1
    assert search.index_pending() == 1
    assert indexed() == Span.objects.count()


@pytest.mark.parametrize("window", [1, 3, 10**6])
def test_a_search_reads_newer_spans_first_and_finds_older_ones_too(
    run: tuple[str, str], window: int, monkeypatch: pytest.MonkeyPatch, index_only: None
) -> None:
    # The index's matches are read in windows of span ids that grow fourfold.
    monkeypatch.setattr(search, "FIRST_WINDOW", window)
    oldest = Span.objects.order_by("id").first()
    assert oldest is not None
    oldest.status_message = "wombat sighted"
    oldest.save()
    assert search.matching_runs("wombat") == {run}
    assert search.matching_runs("wombat", limit=1) == {run}
    assert search.matching_runs("dashboard sync") == {run}
    assert search.matching_runs("dashboard zanzibar") == set()
    assert "wombat" in "".join(search.snippets("wombat", {run})[run])

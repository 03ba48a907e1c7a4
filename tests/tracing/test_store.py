import random

import pytest
from django.db import connection

from tests.tracing.spans import agent_run, protobuf_body, record
from tracing import otlp, store
from tracing.models import RunSummary, Span

pytestmark = pytest.mark.django_db


def _rows(spans: list) -> list[dict]:
    return otlp.decode(protobuf_body(spans), otlp.PROTOBUF).rows


def test_redelivery_stores_each_span_once() -> None:
    rows = _rows(record(lambda t: agent_run(t, failed_attempts=1)))
    first = store.ingest(rows)
    again = store.ingest(_rows(record(lambda t: None)) + [dict(r) for r in rows])
    assert first.stored == 7 and again.stored == 0 and again.duplicates == 7
    assert Span.objects.count() == 7
    summary = RunSummary.objects.get()
    assert summary.span_count == 7 and summary.attempts == 2


def test_duplicates_inside_one_batch_count_once() -> None:
    rows = _rows(record(agent_run))
    result = store.ingest(rows + [dict(r) for r in rows])
    assert result.stored == len(rows) == Span.objects.count()
    assert RunSummary.objects.get().span_count == len(rows)


def test_summary_counts_model_calls_attempts_tokens_and_errors() -> None:
    def build(tracer):  # type: ignore[no-untyped-def]
        agent_run(tracer, failed_attempts=2, activity_id="1", tokens=(100, 10))
        agent_run(tracer, activity_id="2", tokens=(50, 5))

    result = store.ingest(_rows(record(build)))
    summary = RunSummary.objects.get(workflow_id="wf-1", run_id="run-1")
    assert summary.workflow_type == "SupportWorkflow"
    assert summary.model_calls == 2
    assert summary.attempts == 4
    assert summary.failed_attempts == 2
    # Tokens come from the generation spans (every attempt reports usage).
    assert (summary.tokens_in, summary.tokens_out) == (350, 35)
    assert summary.agents == ["Triage"]
    assert summary.last_error == "attempt 2 failed"
    assert summary.first_span_ns == min(s.start_ns for s in Span.objects.all())
    assert summary.last_span_ns == max(s.end_ns for s in Span.objects.all())
    assert result.runs[("wf-1", "run-1")]["model_calls"] == 2
    assert result.new_spans == {("wf-1", "run-1"): summary.span_count}


def test_incremental_summary_matches_one_batch() -> None:
    def build(tracer):  # type: ignore[no-untyped-def]
        for i in range(4):
            agent_run(tracer, failed_attempts=i % 3, activity_id=str(i + 1))

    rows = _rows(record(build))
    store.ingest([dict(r) for r in rows])
    whole = RunSummary.objects.get()
    fields = ["span_count", "model_calls", "attempts", "failed_attempts", "tokens_in",
              "tokens_out", "agents", "first_span_ns", "last_span_ns", "last_error"]  # fmt: skip
    expected = {f: getattr(whole, f) for f in fields}
    Span.objects.all().delete()
    RunSummary.objects.all().delete()
    shuffled = [dict(r) for r in rows]
    random.Random(7).shuffle(shuffled)
    for start in range(0, len(shuffled), 3):
        store.ingest(shuffled[start : start + 3])
    split = RunSummary.objects.get()
    assert {f: getattr(split, f) for f in fields} == expected
    assert Span.objects.filter(workflow_id="").count() == 0


def test_children_inherit_ids_from_a_parent_in_the_batch_or_the_store() -> None:
    rows = _rows(record(agent_run))
    llm = next(r for r in rows if r["name"] == "ChatCompletion")
    parents = [r for r in rows if r is not llm]
    store.ingest(parents)
    store.ingest([llm])
    stored = Span.objects.get(name="ChatCompletion")
    assert (stored.workflow_id, stored.run_id, stored.activity_id, stored.attempt) == (
        "wf-1", "run-1", "1", 1,
    )  # fmt: skip
    assert stored.inherited is True
    assert Span.objects.get(name="RunActivity:invoke_model_activity").inherited is False
    assert RunSummary.objects.get().tokens_in == 100


def test_orphans_stored_first_are_adopted_when_their_ancestor_arrives() -> None:
    rows = _rows(record(agent_run))
    carriers = [r for r in rows if r["workflow_id"]]
    orphans = [r for r in rows if not r["workflow_id"]]
    assert {r["name"] for r in orphans} == {"ChatCompletion", "get_weather"}
    store.ingest(orphans)
    assert Span.objects.filter(workflow_id="").count() == 2
    assert not RunSummary.objects.exists()
    store.ingest(carriers)
    assert Span.objects.filter(workflow_id="").count() == 0
    summary = RunSummary.objects.get()
    assert summary.span_count == len(rows)
    assert summary.tokens_in == 100


def test_ingest_works_under_djangos_debug_cursor() -> None:
    """LOOMVIEW_DEBUG (and any captured-queries context) formats every SQL
    statement with its parameters: ingest's hand-written statements must
    survive that, orphan adoption included (it failed with a TypeError)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    rows = _rows(record(agent_run))
    with CaptureQueriesContext(connection) as queries:
        store.ingest([r for r in rows if not r["workflow_id"]])
        result = store.ingest([r for r in rows if r["workflow_id"]])
    assert result.stored + 2 == len(rows) == Span.objects.count()
    assert Span.objects.filter(workflow_id="").count() == 0
    assert RunSummary.objects.get().span_count == len(rows)
    assert any("tracing_runsummary" in q["sql"] for q in queries.captured_queries)


def test_the_scope_version_and_attributes_are_stored_on_every_backend() -> None:
    rows = _rows(record(agent_run))
    for row in rows:
        row["scope_version"] = "1.2.3"
        row["scope_attributes"] = {"team": "support"}
    store.ingest(rows)
    for span in Span.objects.all():
        assert span.data["scope_version"] == "1.2.3"
        assert span.data["scope_attributes"] == {"team": "support"}


def test_stored_run_less_spans_take_the_run_a_later_batch_brings() -> None:
    """A client's spans know the workflow but not its run: stored first, they
    take the run id from the first span of their trace and workflow that has one."""
    rows = _rows(record(agent_run))
    carriers = [r for r in rows if r["workflow_id"]]
    early = [dict(r, run_id="") for r in carriers[:2]]
    store.ingest(early)
    assert Span.objects.filter(run_id="").count() == 2
    store.ingest([r for r in rows if r["span_id"] not in {e["span_id"] for e in early}])
    assert Span.objects.filter(run_id="").count() == 0
    assert {s.run_id for s in Span.objects.filter(span_id__in=[e["span_id"] for e in early])} == {
        "run-1"
    }
    assert RunSummary.objects.get().span_count == len(rows)


def test_spans_for_run_walks_the_tree_at_query_time() -> None:
    rows = _rows(record(agent_run))
    store.ingest(rows)
    # A descendant stored without ids and never adopted (e.g. written by an
    # older version) is still found through its ancestors.
    llm = Span.objects.get(name="ChatCompletion")
    Span.objects.filter(pk=llm.pk).update(workflow_id="", run_id="", activity_id="", attempt=None)
    store.ingest(_rows(record(lambda t: agent_run(t, "wf-2", "run-2"))))
    found = store.spans_for_run("wf-1", "run-1")
    assert len(found) == len(rows)
    child = next(r for r in found if r["name"] == "ChatCompletion")
    assert child["workflow_id"] == "wf-1" and child["activity_id"] == "1"
    assert child["inherited"] is True
    assert child["attributes"]["llm.model_name"] == "demo-model"
    assert [r["start_ns"] for r in found] == sorted(r["start_ns"] for r in found)


def _native_links(rows: list[dict]) -> list:
    """What the run's history says: the model call scheduled under temporal:startActivity."""
    from tracing.links import HistoryLink

    begin = next(r for r in rows if r["name"] == "temporal:startActivity")
    return [
        HistoryLink(
            trace_id=begin["trace_id"], span_id=begin["span_id"], kind="activity",
            activity_id="1", activity_type="invoke_model_activity",
            scheduled_ns=begin["start_ns"], closed_ns=begin["end_ns"], attempts=2,
            tokens_in=120, tokens_out=31,
        )
    ]  # fmt: skip


_SUMMARY_FIGURES = ("span_count", "model_calls", "attempts", "failed_attempts", "tokens_in",
                    "tokens_out", "agents", "first_span_ns", "last_span_ns")  # fmt: skip


def _figures(summary: RunSummary) -> tuple:
    return tuple(getattr(summary, name) for name in _SUMMARY_FIGURES)


def test_spans_without_ids_are_tied_through_the_history_whenever_they_arrive() -> None:
    """The plugin's own OTel mode: activity spans first, the history read, then the
    workflow-side spans (exported when the workflow completes) hours later."""
    from tests.tracing.spans import native_run

    rows = _rows(record(native_run))
    activity_side = {"temporal:executeActivity", "response"}
    store.ingest([dict(r) for r in rows if r["name"] in activity_side])
    assert Span.objects.exclude(workflow_id="").count() == 0
    store.link_run("wf", "run", _native_links(rows))
    tied = sorted((s.run_id, s.activity_id, s.attempt) for s in Span.objects.all())
    assert tied == [("run", "1", 1), ("run", "1", 1), ("run", "1", 2), ("run", "1", 2)]
    store.ingest([dict(r) for r in rows if r["name"] not in activity_side])
    assert Span.objects.filter(run_id="run").count() == len(rows)
    spans = {s.name: s for s in Span.objects.all()}
    assert spans["temporal:startActivity"].activity_id == "1"
    assert spans["Agent workflow"].kind == "trace" and spans["handoff to Billing"].kind == "handoff"
    late = RunSummary.objects.get(workflow_id="wf", run_id="run")
    assert (late.model_calls, late.attempts, late.failed_attempts) == (1, 2, 1)
    assert (late.tokens_in, late.tokens_out, late.agents) == (120, 31, ["Triage agent"])

    # The same spans in one batch, tied afterwards: the same summary, to the figure.
    Span.objects.all().delete()
    RunSummary.objects.all().delete()
    from tracing.models import TraceLink

    TraceLink.objects.all().delete()
    store.ingest([dict(r) for r in rows])
    store.link_run("wf", "run", _native_links(rows))
    assert _figures(RunSummary.objects.get(workflow_id="wf", run_id="run")) == _figures(late)


def test_the_history_counts_calls_whose_spans_never_arrived() -> None:
    from tests.tracing.spans import native_run

    rows = _rows(record(native_run))
    workflow_side = [
        dict(r) for r in rows if r["name"] not in {"temporal:executeActivity", "response"}
    ]
    store.ingest(workflow_side)
    store.link_run("wf", "run", _native_links(rows))
    summary = RunSummary.objects.get(workflow_id="wf", run_id="run")
    assert (summary.model_calls, summary.attempts, summary.failed_attempts) == (1, 2, 1)
    assert (summary.tokens_in, summary.tokens_out) == (120, 31)
    # A span that reports the call's usage later replaces the history's figure, not adds to it.
    store.ingest([dict(r) for r in rows if r["name"] in {"temporal:executeActivity", "response"}])
    summary = RunSummary.objects.get(workflow_id="wf", run_id="run")
    assert (summary.tokens_in, summary.tokens_out, summary.attempts) == (120, 31, 2)


def test_a_nul_byte_costs_only_its_own_span() -> None:
    # PostgreSQL's text and jsonb refuse U+0000 (the batch is COPied at once there);
    # SQLite keeps it. Either way the good span of the batch is stored.
    def build(tracer):  # type: ignore[no-untyped-def]
        with tracer.start_as_current_span("good"):
            pass
        with tracer.start_as_current_span("bad\x00name") as span:
            span.set_attribute("note", "a\x00b")

    result = store.ingest(_rows(record(build)))
    assert "good" in set(Span.objects.values_list("name", flat=True))
    if connection.vendor == "postgresql":
        assert result.stored == 1
        assert len(result.rejected) == 1 and "0x00" in result.rejected[0]
    else:
        assert result.stored == 2 and not result.rejected

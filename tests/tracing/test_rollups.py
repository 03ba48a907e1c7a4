"""The overview's rollups equal a recount from the span table, whatever the order,
batching and re-delivery of the spans, after status changes and after retention."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.trace import Status, StatusCode, Tracer
from pytest_django.fixtures import Settings

from tests.tracing.spans import protobuf_body, record
from tracing import otlp, retention, rollups, store
from tracing.models import FailureRollup, Rollup, RunRollupState, RunSummary, Span

pytestmark = pytest.mark.django_db

TYPES = ["triage", "approval", "parallel"]
MODELS = ["gpt-4o-mini", "loomview-demo-1", "unpriced-model"]
AGENTS = ["Triage agent", "Billing", "Editor"]
HOUR = 3600 * 10**9
BASE_NS = 1_780_000_000 * 10**9


def fleet(tracer: Tracer, rng: random.Random, runs: int, base_ns: int = BASE_NS) -> None:
    """Runs shaped like the bundled worker's: ids on Temporal spans and agent spans,
    model spans inside activity attempts that carry no ids (they inherit them)."""
    for n in range(runs):
        wtype = rng.choice(TYPES)
        ids = {"temporal.workflow.id": f"{wtype}-{n}", "temporal.run.id": f"run-{n}"}
        start = base_ns + rng.randrange(0, 6 * HOUR)
        t = start
        queue = {"temporal.task_queue": rng.choice(["q-a", "q-b"])}
        root = tracer.start_span(f"RunWorkflow:{wtype}", attributes={**ids, **queue}, start_time=t)
        from opentelemetry import trace

        ctx = trace.set_span_in_context(root)
        for call in range(1, rng.randint(1, 4) + 1):
            agent = rng.choice(AGENTS)
            model = rng.choice(MODELS)
            tries = 1 + (rng.random() < 0.4) + (rng.random() < 0.2)
            for attempt in range(1, tries + 1):
                failed = attempt < tries
                dur = rng.randint(1, 3000) * 10**6
                activity = tracer.start_span(
                    "RunActivity:invoke_model_activity",
                    context=ctx,
                    attributes={
                        **ids,
                        "temporal.activity.id": str(call),
                        "temporal.activity.attempt": attempt,
                    },
                    start_time=t,
                )
                actx = trace.set_span_in_context(activity)
                llm: dict[str, Any] = {
                    "openinference.span.kind": "LLM",
                    "llm.model_name": model,
                    "gen_ai.agent.name": agent,
                    "llm.token_count.prompt": rng.randint(10, 900),
                    "llm.token_count.completion": rng.randint(1, 300),
                }
                gen = tracer.start_span(
                    "ChatCompletion", context=actx, attributes=llm, start_time=t
                )
                if failed:
                    message = rng.choice(["503 overloaded", "rate limited", ""])
                    gen.set_status(Status(StatusCode.ERROR, message))
                    activity.set_status(Status(StatusCode.ERROR, message))
                gen.end(end_time=t + dur - 1000)
                activity.end(end_time=t + dur)
                t += dur
            tool = tracer.start_span(
                "lookup",
                context=ctx,
                attributes={**ids, "agents.span.type": "function", "gen_ai.agent.name": agent},
                start_time=t,
            )
            tool.end(end_time=t + 1000)
        root.end(end_time=t + 10**6)


def _rows(seed: int, runs: int = 12) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return otlp.decode(
        protobuf_body(record(lambda tracer: fleet(tracer, rng, runs))), otlp.PROTOBUF
    ).rows


def _ingest_randomly(rows: list[dict[str, Any]], rng: random.Random) -> None:
    """Random order and batch sizes, and about a third of the spans delivered twice."""
    order = [dict(r) for r in rows]
    rng.shuffle(order)
    again = [dict(r) for r in rng.sample(rows, len(rows) // 3)]
    stream = order + again
    rng.shuffle(stream)
    at = 0
    while at < len(stream):
        size = rng.randint(1, 40)
        store.ingest([dict(r) for r in stream[at : at + size]])
        at += size


def _assert_equal_to_recount() -> None:
    states, recounted = rollups.recount()
    cells, failures = rollups.stored_rollups()
    assert (cells, failures) == rollups.widen(recounted)
    # No row left behind at zero (status moves and retention empty cells).
    assert Rollup.objects.count() == len(cells)
    assert FailureRollup.objects.count() == len(failures)
    assert {key[0] for key in cells} == set(rollups.WIDTHS)
    saved = rollups.load_states(states)
    assert set(saved) == set(states)
    for key, state in states.items():
        assert saved[key].facts == state.facts
        assert (saved[key].start_ns, saved[key].agents) == (state.start_ns, state.agents)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_equal_a_recount_after_random_ingest_and_redelivery(seed: int) -> None:
    rng = random.Random(seed)
    rows = _rows(seed)
    _ingest_randomly(rows, rng)
    assert Span.objects.count() == len(rows)
    _assert_equal_to_recount()
    # And they agree with the run summaries the runs list reads.
    hourly = Rollup.objects.filter(width_ns=HOUR)
    totals = hourly.filter(agent="*", model="*")
    assert sum(r.runs for r in totals) == RunSummary.objects.count() == 12
    calls = hourly.exclude(agent="*").exclude(model="*")
    assert sum(r.attempts for r in calls) == sum(s.attempts for s in RunSummary.objects.all())
    assert sum(r.failed_attempts for r in calls) == sum(
        s.failed_attempts for s in RunSummary.objects.all()
    )
    assert sum(r.calls for r in calls) == sum(s.model_calls for s in RunSummary.objects.all())
    assert sum(r.tokens_in for r in calls) == sum(s.tokens_in for s in RunSummary.objects.all())
    assert sum(r.tokens_out for r in calls) == sum(s.tokens_out for s in RunSummary.objects.all())


def test_children_before_ancestors_are_counted_once_adopted() -> None:
    rows = _rows(7, runs=3)
    # Exporters send children first: the id-less model spans arrive before
    # their RunActivity ancestors, then everything again.
    orphans = [r for r in rows if not r["workflow_id"]]
    carriers = [r for r in rows if r["workflow_id"]]
    store.ingest([dict(r) for r in orphans])
    assert not RunRollupState.objects.exists()
    store.ingest([dict(r) for r in carriers])
    store.ingest([dict(r) for r in rows])
    _assert_equal_to_recount()
    assert Rollup.objects.exclude(agent="*").exclude(model="*").exists()


def test_status_changes_move_counts_and_survive_a_rebuild() -> None:
    store.ingest(_rows(11, runs=6))
    keys = list(RunRollupState.objects.values_list("workflow_id", "run_id"))
    changed = rollups.set_status(
        {keys[0]: ("FAILED", BASE_NS + 7 * HOUR), keys[1]: ("COMPLETED", None)}
    )
    assert changed == 2
    assert rollups.set_status({keys[1]: ("COMPLETED", None)}) == 0
    by_status = {
        s: sum(r.runs for r in Rollup.objects.filter(width_ns=HOUR, agent="*", model="*", status=s))
        for s in ("FAILED", "COMPLETED", "")
    }
    assert by_status == {"FAILED": 1, "COMPLETED": 1, "": 4}
    _assert_equal_to_recount()
    before = rollups.stored_rollups()
    assert rollups.rebuild() == 6
    assert rollups.stored_rollups() == before


@pytest.mark.django_db(transaction=True)
def test_retention_takes_runs_out_of_the_rollups_with_their_spans(settings: Settings) -> None:
    """Through the real retention path (manage.py prune's function, batches and all):
    whole runs whose last span is older than the cutoff go, runs that started before
    the cutoff but ended after it stay counted, and the rollups equal a recount."""
    store.ingest(_rows(5, runs=14))
    keys = list(RunRollupState.objects.values_list("workflow_id", "run_id"))
    rollups.set_status({k: ("COMPLETED" if i % 3 else "FAILED", None) for i, k in enumerate(keys)})
    states = sorted(RunRollupState.objects.all(), key=lambda s: s.end_ns)
    # A cutoff inside a run (started before it, ended after): that run stays.
    spanning = states[len(states) // 2]
    cutoff_ns = spanning.start_ns + 1
    doomed = {(s.workflow_id, s.run_id) for s in states if s.end_ns < cutoff_ns}
    assert 0 < len(doomed) < len(states)
    assert (spanning.workflow_id, spanning.run_id) not in doomed
    settings.LOOMVIEW_RETENTION_DAYS = 3
    now = datetime.fromtimestamp(cutoff_ns / 1e9, tz=UTC) + timedelta(days=3)
    result = retention.prune(now, pause=0)
    assert result.deleted["runs"] == len(doomed)
    assert result.deleted["run rollup states"] == len(doomed)
    kept = set(RunRollupState.objects.values_list("workflow_id", "run_id"))
    assert kept == set(keys) - doomed
    assert set(RunSummary.objects.values_list("workflow_id", "run_id")) == kept
    _assert_equal_to_recount()
    for width in rollups.WIDTHS:
        cells = Rollup.objects.filter(width_ns=width, agent="*", model="*")
        assert sum(r.runs for r in cells) == len(kept)
    # The spanning run's hour is still there, with it.
    assert Rollup.objects.filter(
        width_ns=HOUR, bucket_ns=spanning.start_ns // HOUR * HOUR, agent="*", model="*"
    ).exists()


def test_rollups_prune_forgets_runs_before_a_cutoff() -> None:
    store.ingest(_rows(6, runs=8))
    ends = sorted(RunRollupState.objects.values_list("end_ns", flat=True))
    old = list(
        RunSummary.objects.filter(last_span_ns__lt=ends[3] + 1).values_list("workflow_id", "run_id")
    )
    for workflow_id, run_id in old:
        Span.objects.filter(workflow_id=workflow_id, run_id=run_id).delete()
        RunSummary.objects.filter(workflow_id=workflow_id, run_id=run_id).delete()
    assert rollups.prune(ends[3] + 1) == len(old) == 4
    _assert_equal_to_recount()


def test_latency_quantiles_from_merged_bins() -> None:
    durations = [random.Random(3).randint(1, 20_000) * 10**6 for _ in range(2000)]
    hist = [0] * len(rollups.HIST)
    for d in durations:
        hist[rollups.latency_bin(d)] += 1
    exact = sorted(durations)
    for q in (0.5, 0.95):
        estimate = rollups.quantile_ms(hist, q)
        assert estimate is not None
        true_ms = exact[int(q * len(exact)) - 1] / 1e6
        assert abs(estimate - true_ms) / true_ms < 0.1
    assert rollups.quantile_ms([0] * len(rollups.HIST), 0.5) is None

"""Temporal's operations keep one story: reset, continue-as-new, child workflows, run
again and signal-with-start, on the real dev server and the bundled worker with tracing on.

Each test asserts that the runs list, the run page, the run API and the run's own
result agree on every figure.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus

from tests.conftest import TEMPORAL_BIN, TemporalServer, WorkerProcess, connect_client
from worker.inputs import (
    AgentRunInput,
    AgentRunResult,
    ConversationInput,
    ConversationResult,
    OrchestratorResult,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]
T = TypeVar("T")
HTMX = {"HX-Request": "true"}


def run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(make())


@pytest.fixture(scope="module")
def traced_worker(
    temporal_server: TemporalServer,
    live_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    """One bundled worker for the module, exporting its spans to the live dashboard."""
    name = uuid.uuid4().hex[:8]
    logs = tmp_path_factory.mktemp("ops-worker")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("OTEL_") and key != "OPENAI_API_KEY"
    }
    env.update(
        {
            "TEMPORAL_ADDRESS": temporal_server.address,
            "TEMPORAL_NAMESPACE": "default",
            "LOOMVIEW_TASK_QUEUE": f"ops-{name}",
            "LOOMVIEW_MODEL_PROVIDER": "demo",
            "LOOMVIEW_DEMO_LATENCY_MS": "20",
            "LOOMVIEW_DEMO_LOG": str(logs / "demo.jsonl"),
            "LOOMVIEW_MODEL_RETRY_INITIAL_SECONDS": "0.2",
            "LOOMVIEW_MODEL_RETRY_MAX_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
            "LOOMVIEW_TRACING": "on",
            "LOOMVIEW_OTLP_ENDPOINT": f"{live_server.url}/v1/traces",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    worker = WorkerProcess(
        task_queue=env["LOOMVIEW_TASK_QUEUE"],
        env=env,
        log_path=logs / "worker.log",
        demo_log=Path(env["LOOMVIEW_DEMO_LOG"]),
    )
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def on_temporal(temporal_server: TemporalServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    cache.clear()
    return temporal_server.address


@pytest.fixture
def ops(client: Client) -> Client:
    # A superuser: these tests flush the database between them (the live server needs
    # transactions), which takes the role groups the migrations made with it.
    client.force_login(User.objects.create_superuser("ops", password="x"))
    return client


def start(
    address: str, workflow: str, arg: Any, task_queue: str, **options: Any
) -> tuple[str, str]:
    workflow_id = options.pop("id", None) or f"ops-{workflow}-{uuid.uuid4().hex[:8]}"

    async def go() -> str:
        client = await connect_client(address)
        handle = await client.start_workflow(
            workflow, arg, id=workflow_id, task_queue=task_queue, **options
        )
        return str(handle.first_execution_run_id or handle.result_run_id)

    return workflow_id, run(go)


def result_of(address: str, workflow_id: str, run_id: str, result_type: type[T]) -> T:
    async def go() -> T:
        client = await connect_client(address)
        handle = client.get_workflow_handle(workflow_id, run_id=run_id, result_type=result_type)
        return await asyncio.wait_for(handle.result(follow_runs=False), timeout=120)

    return run(go)


def model_call_scheduled(address: str, workflow_id: str, run_id: str, number: int) -> int:
    """The WorkflowTaskCompleted event that scheduled model call N (a reset point)."""

    async def go() -> int:
        client = await connect_client(address)
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        calls = [
            e.activity_task_scheduled_event_attributes
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name
            == "invoke_model_activity"
        ]
        return int(calls[number - 1].workflow_task_completed_event_id)

    return run(go)


def get(client: Client, path: str, params: dict[str, str] | None = None) -> Any:
    return client.get(path, params or {})


def api_run(client: Client, workflow_id: str, run_id: str) -> dict[str, Any]:
    response = get(client, f"/api/runs/{workflow_id}/{run_id}/")
    assert response.status_code == 200, response.content[:500]
    return dict(response.json())


def list_row(client: Client, workflow_id: str, run_id: str) -> dict[str, Any]:
    response = get(client, "/api/runs/", {"q": workflow_id})
    assert response.status_code == 200
    rows = [r for r in response.json()["runs"] if r["run_id"] == run_id]
    assert rows, f"{workflow_id} / {run_id} is not in the runs list"
    return dict(rows[0])


def settled(
    client: Client, workflow_id: str, run_id: str, patience: float = 40, root: bool = True
) -> dict[str, Any]:
    """The run's API answer once its root span is stored (if it has one: a terminated
    run has none) and nothing changed for a second."""
    deadline = time.monotonic() + patience
    previous: tuple[Any, ...] | None = None
    while True:
        story = api_run(client, workflow_id, run_id)
        has_root = not root or any(s["name"].startswith("RunWorkflow:") for s in story["spans"])
        current = (len(story["spans"]), story["totals"]["tokens_in"], story["status"])
        if has_root and story["status"] != "RUNNING" and current == previous:
            return story
        assert time.monotonic() < deadline, f"{workflow_id} / {run_id} never settled"
        previous = current if has_root else None
        time.sleep(1.0)


def page_figures(client: Client, workflow_id: str, run_id: str) -> dict[str, str]:
    html = get(client, f"/runs/{workflow_id}/{run_id}/").content.decode()
    facts = dict(re.findall(r"<dt>([^<]+)</dt><dd[^>]*>(.*?)</dd>", html, re.S))
    return {k: re.sub(r"<[^>]+>", " ", v).split()[0] if v.strip() else "" for k, v in facts.items()}


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() * 1000


def assert_agree(
    client: Client,
    workflow_id: str,
    run_id: str,
    result: AgentRunResult | None = None,
    root: bool = True,
) -> dict[str, Any]:
    """The runs list, the run page, the run API and the run's own result say the same."""
    story = settled(client, workflow_id, run_id, root=root)
    totals = story["totals"]
    row = list_row(client, workflow_id, run_id)
    page = page_figures(client, workflow_id, run_id)
    for name in ("model_calls", "attempts", "failed_attempts", "tokens_in", "tokens_out"):
        assert row[name] == totals[name], (name, row[name], totals[name])
    assert page["Model calls"] == str(totals["model_calls"])
    assert page["Attempts"] == str(totals["attempts"])
    assert page["Tokens in / out"] == str(totals["tokens_in"])
    if totals["cost_usd"] is not None:
        assert Decimal(row["estimated_cost_usd"]).quantize(Decimal("0.0001")) == Decimal(
            totals["cost_usd"]
        )
    if story["close_time"] and story["start_time"]:
        duration = _ms(story["close_time"]) - _ms(story["start_time"])
        assert abs(row["duration_ms"] - duration) <= 2, (row["duration_ms"], duration)
        start = _ms(row["start_time"].replace("Z", "+00:00"))
        assert abs(start - _ms(story["start_time"])) <= 2, (row["start_time"], story["start_time"])
    if result is not None:
        assert totals["model_calls"] == result.model_calls
        assert (totals["tokens_in"], totals["tokens_out"]) == (
            result.input_tokens,
            result.output_tokens,
        )
    return story


def roots(story: dict[str, Any]) -> list[dict[str, Any]]:
    ids = {s["span_id"] for s in story["spans"]}
    return [s for s in story["spans"] if not s["parent_span_id"] or s["parent_span_id"] not in ids]


# -- reset -------------------------------------------------------------------------


def test_reset_to_before_model_call_2_keeps_one_story(
    ops: Client, traced_worker: WorkerProcess, on_temporal: str
) -> None:
    """Call 1 failed once and was retried; the run is reset to before call 2."""
    workflow_id, first = start(
        on_temporal,
        "triage",
        AgentRunInput("The sync is stuck with errors", faults=["call=1:fail=1"]),
        traced_worker.task_queue,
    )
    first_result = result_of(on_temporal, workflow_id, first, AgentRunResult)
    before = assert_agree(ops, workflow_id, first, first_result)
    assert before["totals"]["attempts"] == 5 and before["totals"]["failed_attempts"] == 1

    point = model_call_scheduled(on_temporal, workflow_id, first, 2)
    response = ops.post(
        f"/runs/{workflow_id}/{first}/reset/",
        {"event_id": str(point), "reason": "try the specialist again"},
        headers=HTMX,
    )
    second = response["HX-Redirect"].rstrip("/").split("/")[-1]
    assert second != first
    result = result_of(on_temporal, workflow_id, second, AgentRunResult)
    story = assert_agree(ops, workflow_id, second, result)

    # The whole run: call 1 (with its failed attempt) inherited from the first run.
    calls = story["model_calls"]
    assert [c["number"] for c in calls] == [1, 2, 3, 4]
    assert calls[0]["inherited_from"] == first
    assert [a["outcome"] for a in calls[0]["attempts"]] == ["failed", "completed"]
    assert all(a["matched"] for a in calls[0]["attempts"])
    assert all(c["inherited_from"] is None for c in calls[1:])
    assert story["totals"]["attempts"] == 5 and story["totals"]["failed_attempts"] == 1
    assert story["family"]["reset_from"]["run_id"] == first

    # Its own trace, with one root: the new run's RunWorkflow span, no orphans.
    (root,) = roots(story)
    assert root["name"] == "RunWorkflow:triage"
    assert {s["trace_id"] for s in story["spans"]} == {root["trace_id"]}
    assert root["trace_id"] not in {s["trace_id"] for s in before["spans"]}
    health = story["health"]
    assert health["ok"], health
    assert health["problems"]["orphans"] == 0 and health["problems"]["duplicates"] == 0
    assert api_run(ops, workflow_id, first)["family"]["reset_to"] == [second]

    # The page says so: inherited, linked to the run it came from.
    html = get(ops, f"/runs/{workflow_id}/{second}/").content.decode()
    assert 'data-family="reset-from"' in html and f"/runs/{workflow_id}/{first}/" in html
    assert '"inh": "' + first in html  # the timeline marks the inherited call
    row = list_row(ops, workflow_id, second)
    assert row["reset_from"] == first and row["health_problems"] == 0


def cli_reset(address: str, workflow_id: str, run_id: str, event_id: int) -> str:
    """`temporal workflow reset` (nothing of Loomview knows of it); the new run's id."""
    subprocess.run(
        [str(TEMPORAL_BIN), "workflow", "reset", "--address", address, "--namespace", "default",
         "--workflow-id", workflow_id, "--run-id", run_id, "--event-id", str(event_id),
         "--reason", "cli: the last calls again"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip

    async def go() -> str:
        client = await connect_client(address)
        return str((await client.get_workflow_handle(workflow_id).describe()).run_id)

    new_run = run(go)
    assert new_run != run_id
    return new_run


def test_a_reset_of_a_reset_made_with_the_cli_finds_each_call_in_its_run(
    ops: Client, traced_worker: WorkerProcess, on_temporal: str
) -> None:
    """Run 2 is run 1 reset before call 2; run 3 is run 2 reset before call 3, both
    with the CLI: run 3 has call 1 from run 1, call 2 from run 2, and calls 3 and 4."""
    workflow_id, first = start(
        on_temporal,
        "triage",
        AgentRunInput("The sync is stuck with errors", faults=["call=1:fail=1"]),
        traced_worker.task_queue,
    )
    first_result = result_of(on_temporal, workflow_id, first, AgentRunResult)
    assert_agree(ops, workflow_id, first, first_result)
    point = model_call_scheduled(on_temporal, workflow_id, first, 2)
    second = cli_reset(on_temporal, workflow_id, first, point)
    assert_agree(
        ops, workflow_id, second, result_of(on_temporal, workflow_id, second, AgentRunResult)
    )
    point = model_call_scheduled(on_temporal, workflow_id, second, 3)
    third = cli_reset(on_temporal, workflow_id, second, point)
    result = result_of(on_temporal, workflow_id, third, AgentRunResult)
    story = assert_agree(ops, workflow_id, third, result)

    calls = story["model_calls"]
    assert [c["number"] for c in calls] == [1, 2, 3, 4]
    assert [c["inherited_from"] for c in calls] == [first, second, None, None]
    assert [a["outcome"] for a in calls[0]["attempts"]] == ["failed", "completed"]
    assert all(a["matched"] for c in calls for a in c["attempts"])
    assert story["family"]["reset_from"]["run_id"] == second
    assert story["health"]["ok"], story["health"]
    (root,) = roots(story)
    assert root["name"] == "RunWorkflow:triage"
    assert api_run(ops, workflow_id, second)["family"]["reset_to"] == [third]
    row = list_row(ops, workflow_id, third)
    assert row["reset_from"] == second and row["health_problems"] == 0
    # The trace's agent view marks the inherited calls; a call's page names its run.
    html = get(ops, f"/runs/{workflow_id}/{third}/").content.decode()
    assert "call 1 · attempt 2/2 · inherited" in html
    assert "call 2 · attempt 1/1 · inherited" in html
    assert "call 3 · attempt 1/1 · inherited" not in html
    for call, made_by in zip(calls, (first, second, None, None), strict=True):
        page = get(ops, f"/runs/{workflow_id}/{third}/calls/{call['activity_id']}/")
        text = page.content.decode()
        assert page.status_code == 200
        assert ("data-call-inherited" in text) == (made_by is not None)
        if made_by:
            assert f'href="/runs/{workflow_id}/{made_by}/"' in text


def test_reset_of_an_open_run_replays_the_signals_after_its_reset_point(
    ops: Client, traced_worker: WorkerProcess, on_temporal: str
) -> None:
    """An open conversation, reset from the Actions card to before model call 2: the base
    run is terminated; the new run inherits call 1, answers the message that was before
    the reset point again, and the one Temporal reapplied (a signal after it)."""
    workflow_id = f"ops-open-reset-{uuid.uuid4().hex[:8]}"

    async def answered(handle: Any, turns: int) -> None:
        deadline = time.monotonic() + 60
        while True:
            history = await handle.query("history")
            if sum(1 for m in history if m["role"] == "assistant") >= turns:
                return
            assert time.monotonic() < deadline, f"{turns} turns never answered"
            await asyncio.sleep(0.2)

    async def before() -> str:
        client = await connect_client(on_temporal)
        handle = await client.start_workflow(
            "conversation", ConversationInput(prompt="Where to stay in Porto?"),
            id=workflow_id, task_queue=traced_worker.task_queue,
        )  # fmt: skip
        await answered(handle, 1)
        await handle.signal("user_message", "And what to eat?")
        await answered(handle, 2)
        await handle.signal("user_message", "Is the metro open late?")
        await answered(handle, 3)
        return str(handle.first_execution_run_id)

    first = run(before)
    point = model_call_scheduled(on_temporal, workflow_id, first, 2)
    response = ops.post(
        f"/runs/{workflow_id}/{first}/reset/",
        {"event_id": str(point), "reason": "answer the food question again"},
        headers=HTMX,
    )
    second = response["HX-Redirect"].rstrip("/").split("/")[-1]
    assert second != first

    async def after() -> ConversationResult:
        client = await connect_client(on_temporal)
        handle = client.get_workflow_handle(
            workflow_id, run_id=second, result_type=ConversationResult
        )
        await answered(handle, 3)
        await handle.signal("end")
        return await asyncio.wait_for(handle.result(follow_runs=False), timeout=60)

    result = run(after)
    assert [m.content for m in result.history if m.role == "user"] == [
        "Where to stay in Porto?", "And what to eat?", "Is the metro open late?",
    ]  # fmt: skip
    # The base run was terminated by the reset while it waited for a message: its
    # RunWorkflow span never ended, so it has no root, and that is no fault of the
    # instrumentation: its spans sit under a span the run never ended.
    old = assert_agree(ops, workflow_id, first, root=False)
    assert old["status"] == "TERMINATED" and old["totals"]["model_calls"] == 3
    assert not any(s["name"].startswith("RunWorkflow:") for s in old["spans"])
    assert old["health"]["ok"], old["health"]
    assert old["health"]["under_unended_parents"] == 6  # 3 turns, 3 StartActivity spans
    assert list_row(ops, workflow_id, first)["health_problems"] == 0
    html = get(ops, f"/runs/{workflow_id}/{first}/").content.decode()
    assert 'data-health-stat="under_unended_parents">6<' in html
    story = assert_agree(ops, workflow_id, second)
    assert result.turns == story["totals"]["model_calls"] == 3
    calls = story["model_calls"]
    assert [c["inherited_from"] for c in calls] == [first, None, None]
    assert all(c["matched"] for c in calls)
    # One root for the run's work; signal and query handlers (from an untraced client)
    # start traces of their own.
    (root,) = [
        s for s in roots(story) if not s["name"].startswith(("HandleSignal:", "HandleQuery:"))
    ]
    assert root["name"] == "RunWorkflow:conversation"
    assert all(not s["parent_span_id"] for s in roots(story))
    assert story["health"]["ok"], story["health"]
    # The reapplied signal is this run's: its handler's span is tied to it.
    handlers = [s for s in story["spans"] if s["name"] == "HandleSignal:user_message"]
    assert handlers and all(not s.get("inherited_from") for s in handlers)
    assert story["family"]["reset_from"]["run_id"] == first
    assert api_run(ops, workflow_id, first)["family"]["reset_to"] == [second]


def test_a_run_that_timed_out_is_not_blamed_for_the_spans_it_never_ended(
    ops: Client, traced_worker: WorkerProcess, on_temporal: str
) -> None:
    """A conversation answers its first message, then times out waiting for the next:
    Temporal's interceptor never ends its RunWorkflow span, so that span is never sent."""
    workflow_id = f"ops-timeout-{uuid.uuid4().hex[:8]}"

    async def go() -> str:
        client = await connect_client(on_temporal)
        handle = await client.start_workflow(
            "conversation", ConversationInput(prompt="Best time to visit Madeira?"),
            id=workflow_id, task_queue=traced_worker.task_queue,
            execution_timeout=timedelta(seconds=4),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while (await handle.describe()).status != WorkflowExecutionStatus.TIMED_OUT:
            assert time.monotonic() < deadline, "the run never timed out"
            await asyncio.sleep(0.3)
        return str(handle.first_execution_run_id)

    run_id = run(go)
    story = assert_agree(ops, workflow_id, run_id, root=False)
    assert story["status"] == "TIMED_OUT" and story["totals"]["model_calls"] == 1
    assert story["model_calls"][0]["matched"]
    assert not any(s["name"].startswith("RunWorkflow:") for s in story["spans"])
    assert story["health"]["ok"], story["health"]
    assert story["health"]["under_unended_parents"] == 2  # the turn, its StartActivity
    assert list_row(ops, workflow_id, run_id)["health_problems"] == 0


# -- continue-as-new -------------------------------------------------------------------


def test_continue_as_new_runs_form_one_chain_with_totals(
    ops: Client, traced_worker: WorkerProcess, on_temporal: str
) -> None:
    workflow_id, first = start(
        on_temporal,
        "conversation",
        ConversationInput(prompt="one", max_turns_per_run=2),
        traced_worker.task_queue,
    )

    async def drive() -> tuple[str, ConversationResult]:
        client = await connect_client(on_temporal)
        await client.get_workflow_handle(workflow_id).execute_update(
            "send_message", "two", result_type=str
        )
        deadline = time.monotonic() + 30
        while (await client.get_workflow_handle(workflow_id).describe()).run_id == first:
            assert time.monotonic() < deadline, "the conversation never continued as new"
            await asyncio.sleep(0.1)
        latest = client.get_workflow_handle(workflow_id, result_type=ConversationResult)
        await latest.execute_update("send_message", "three", result_type=str)
        await latest.signal("end")
        second = (await latest.describe()).run_id
        return second, await latest.result()

    second, result = run(drive)
    first_story = assert_agree(ops, workflow_id, first)
    second_story = assert_agree(ops, workflow_id, second)
    assert first_story["status"] == "CONTINUED_AS_NEW"
    assert first_story["totals"]["model_calls"] == 2
    # The last run's own result: its one turn is its one model call.
    assert result.turns == second_story["totals"]["model_calls"] == 1

    for story, previous, following in (
        (first_story, None, second),
        (second_story, first, None),
    ):
        chain = story["family"]["chain"]
        assert [r["run_id"] for r in chain["runs"]] == [first, second]
        assert (chain["previous"] or {}).get("run_id") == previous
        assert (chain["next"] or {}).get("run_id") == following
        totals = chain["totals"]
        assert totals["runs"] == 2
        # Every assistant message of the carried history is one model call of the chain.
        assert totals["model_calls"] == sum(1 for m in result.history if m.role == "assistant")
        assert totals["tokens_in"] == (
            first_story["totals"]["tokens_in"] + second_story["totals"]["tokens_in"]
        )
    assert second_story["family"]["chain"]["previous_kind"] == "continued_as_new"
    html = get(ops, f"/runs/{workflow_id}/{first}/").content.decode()
    assert 'data-link="next"' in html and f"/runs/{workflow_id}/{second}/" in html
    assert "data-chain-totals" in html and "Whole chain: 2 runs, 3 model calls" in html


# -- child workflows -----------------------------------------------------------------


def runs_of(address: str, workflow_id: str) -> list[tuple[str, str]]:
    """(run id, status) of every run of a workflow id, oldest first."""

    async def go() -> list[tuple[str, str]]:
        client = await connect_client(address)
        found = [
            (e.run_id, e.status.name if e.status else "", e.start_time)
            async for e in client.list_workflows(f"WorkflowId = '{workflow_id}'")
        ]
        return [(run_id, status) for run_id, status, _ in sorted(found, key=lambda r: r[2])]

    return run(go)


def test_children_roll_up_into_their_parent_and_link_back(
    ops: Client, traced_worker: WorkerProcess, on_temporal: str
) -> None:
    workflow_id, parent_run = start(
        on_temporal,
        "orchestrator",
        AgentRunInput("Double charged on INV-88 and the sync has failed since Monday"),
        traced_worker.task_queue,
    )
    result = result_of(on_temporal, workflow_id, parent_run, OrchestratorResult)
    # The parent's own story: the lead, the Reviewer it used as a tool, the summarizer.
    parent = assert_agree(ops, workflow_id, parent_run, result)  # type: ignore[arg-type]
    agents = {s["agent"] for s in parent["spans"] if s["agent"]}
    assert {"Lead planner", "Reviewer", "Case summarizer"} <= agents

    child_runs: dict[str, list[str]] = {}
    child_totals: dict[str, dict[str, int]] = {}
    for outcome in result.children:
        runs = runs_of(on_temporal, outcome.workflow_id)
        child_runs[outcome.specialist] = [run_id for run_id, _ in runs]
        *earlier, (last, status) = runs
        assert status == "COMPLETED"
        own = result_of(on_temporal, outcome.workflow_id, last, AgentRunResult)
        stories = [assert_agree(ops, outcome.workflow_id, last, own)]
        # The technical child failed once (after its agent answered) and was retried.
        assert [s for _, s in earlier] == (["FAILED"] if outcome.specialist == "technical" else [])
        stories += [assert_agree(ops, outcome.workflow_id, r) for r, _ in earlier]
        for story in stories:
            assert story["family"]["parent"] == {"workflow_id": workflow_id, "run_id": parent_run}
        child_totals[outcome.specialist] = {
            name: sum(s["totals"][name] for s in stories)
            for name in ("model_calls", "attempts", "tokens_in", "tokens_out")
        }
        assert (own.model_calls, own.input_tokens) == (outcome.model_calls, outcome.input_tokens)
    assert len(child_runs["technical"]) == 2 and len(child_runs["billing"]) == 1
    retried = api_run(ops, f"{workflow_id}-technical", child_runs["technical"][1])
    assert retried["family"]["chain"]["previous"]["run_id"] == child_runs["technical"][0]
    assert retried["family"]["chain"]["previous_kind"] == "retry"

    # The parent's page: each child once, with all its runs rolled up.
    story = api_run(ops, workflow_id, parent_run)
    children = {c["workflow_id"]: c["figures"] for c in story["family"]["children"]}
    assert set(children) == {f"{workflow_id}-billing", f"{workflow_id}-technical"}
    assert children[f"{workflow_id}-technical"]["runs"] == 2
    for specialist, totals in child_totals.items():
        figures = children[f"{workflow_id}-{specialist}"]
        assert {name: figures[name] for name in totals} == totals
    everything = story["family"]["children_totals"]
    assert everything["model_calls"] == sum(t["model_calls"] for t in child_totals.values())
    assert everything["runs"] == 3

    # The runs list: the parent's columns are its own; what the children add is apart,
    # and each child run has its own row, so no model call is counted twice.
    row = list_row(ops, workflow_id, parent_run)
    assert row["model_calls"] == result.model_calls
    assert row["children"]["children"] == 2
    assert row["children"]["model_calls"] == everything["model_calls"]
    assert row["children"]["tokens_in"] == everything["tokens_in"]
    html = get(ops, f"/runs/{workflow_id}/{parent_run}/").content.decode()
    assert 'data-family="children"' in html
    assert f"/runs/{workflow_id}-technical/{child_runs['technical'][0]}/" in html
    child_html = get(
        ops, f"/runs/{workflow_id}-billing/{child_runs['billing'][0]}/"
    ).content.decode()
    assert (
        'data-family="parent"' in child_html and f"/runs/{workflow_id}/{parent_run}/" in child_html
    )


def test_start_a_run_offers_the_orchestrator_and_starts_it(
    ops: Client, traced_worker: WorkerProcess, on_temporal: str
) -> None:
    form = get(ops, "/runs/new/").content.decode()
    assert 'value="orchestrator"' in form
    response = ops.post(
        "/runs/new/",
        {
            "workflow": "orchestrator",
            "prompt": "Double charged and the sync is down",
            "faults": "",
            "task_queue": traced_worker.task_queue,
            "workflow_id": f"ops-started-{uuid.uuid4().hex[:6]}",
        },
    )
    assert response.status_code == 302
    workflow_id, run_id = response["Location"].rstrip("/").split("/")[-2:]
    result = result_of(on_temporal, workflow_id, run_id, OrchestratorResult)
    assert [c.specialist for c in result.children] == ["billing", "technical"]


# -- run again ---------------------------------------------------------------------------


def test_run_again_is_a_new_story_linked_to_the_old_one(
    ops: Client, traced_worker: WorkerProcess, on_temporal: str
) -> None:
    workflow_id, run_id = start(
        on_temporal,
        "triage",
        AgentRunInput("Refund invoice INV-7, I was charged twice", faults=["call=1:fail=1"]),
        traced_worker.task_queue,
    )
    first = result_of(on_temporal, workflow_id, run_id, AgentRunResult)
    response = ops.post(f"/runs/{workflow_id}/{run_id}/again/", headers=HTMX)
    again_id, again_run = response["HX-Redirect"].rstrip("/").split("/")[-2:]
    assert again_id.startswith(f"{workflow_id}-again-")
    second = result_of(on_temporal, again_id, again_run, AgentRunResult)
    old = assert_agree(ops, workflow_id, run_id, first)
    new = assert_agree(ops, again_id, again_run, second)
    # The same input gives the same story: the same calls, tokens and retried attempt.
    assert new["totals"] == {**old["totals"], "spans": new["totals"]["spans"]}
    assert new["input"] == old["input"]
    assert new["family"]["run_again_of"] == {"workflow_id": workflow_id, "run_id": run_id}
    assert old["family"]["run_again_as"] == [{"workflow_id": again_id, "run_id": again_run}]
    assert new["health"]["ok"] and old["health"]["ok"]


# -- signal-with-start -----------------------------------------------------------------


def test_signal_with_start_delivers_the_first_message(
    ops: Client, traced_worker: WorkerProcess, on_temporal: str
) -> None:
    workflow_id = f"ops-sws-{uuid.uuid4().hex[:8]}"

    async def go() -> tuple[str, ConversationResult]:
        client = await connect_client(on_temporal)
        handle = await client.start_workflow(
            "conversation",
            ConversationInput(),
            id=workflow_id,
            task_queue=traced_worker.task_queue,
            start_signal="user_message",
            start_signal_args=["Which neighbourhood in Lisbon for a first visit?"],
            result_type=ConversationResult,
        )
        await handle.execute_update("send_message", "And for food?", result_type=str)
        await handle.signal("end")
        return str(handle.result_run_id), await handle.result()

    run_id, result = run(go)
    story = assert_agree(ops, workflow_id, run_id)
    assert result.turns == story["totals"]["model_calls"] == 2
    assert result.history[0].role == "user" and result.history[0].content.startswith("Which")
    # The signal that started it is one event, answered by its handler's span.
    handlers = [s["name"] for s in story["spans"] if s["name"].startswith("HandleSignal:")]
    assert handlers.count("HandleSignal:user_message") == 1
    html = get(ops, f"/runs/{workflow_id}/{run_id}/").content.decode()
    assert "signal user_message" in html
    assert story["health"]["ok"], story["health"]


def test_signal_with_start_from_the_start_page_starts_once_then_signals_the_open_run(
    ops: Client, traced_worker: WorkerProcess, on_temporal: str
) -> None:
    from dashboard.models import AuditEntry

    workflow_id = f"ops-sws-ui-{uuid.uuid4().hex[:8]}"
    form = {
        "workflow": "conversation",
        "task_queue": traced_worker.task_queue,
        "workflow_id": workflow_id,
        "signal_with_start": "on",
    }
    first = ops.post("/runs/new/", {**form, "prompt": "Which neighbourhood in Lisbon?"})
    assert first.status_code == 302, first.content[:500]
    run_id = first["Location"].rstrip("/").split("/")[-1]
    # The same id again: the open run gets the message, no second run starts.
    second = ops.post("/runs/new/", {**form, "prompt": "And for food?"})
    assert second.status_code == 302 and second["Location"] == first["Location"]

    async def finish() -> ConversationResult:
        client = await connect_client(on_temporal)
        handle = client.get_workflow_handle(workflow_id, result_type=ConversationResult)
        assert (await handle.describe()).run_id == run_id
        await handle.signal("end")  # it answers the messages it has before it ends
        return await handle.result()

    result = run(finish)
    assert [m.content for m in result.history if m.role == "user"] == [
        "Which neighbourhood in Lisbon?",
        "And for food?",
    ]
    entries = list(AuditEntry.objects.filter(action="start", workflow_id=workflow_id))
    assert [e.outcome for e in entries] == ["ok", "ok"]
    messages = sorted(e.message for e in entries)
    assert messages[0].startswith("signal user_message sent to the open run")
    assert messages[1] == f"started {workflow_id} with signal user_message"
    assert all(e.payload["signal_with_start"] == "user_message" for e in entries)
    story = settled(ops, workflow_id, run_id)
    handlers = [s["name"] for s in story["spans"] if s["name"].startswith("HandleSignal:")]
    assert handlers.count("HandleSignal:user_message") == 2
    assert story["totals"]["model_calls"] == result.turns == 2


def test_signal_with_start_is_a_form_error_for_a_workflow_without_messages(
    ops: Client, on_temporal: str
) -> None:
    from dashboard.models import AuditEntry

    page = ops.post(
        "/runs/new/",
        {"workflow": "triage", "prompt": "Refund", "task_queue": "q", "signal_with_start": "on"},
    )
    assert page.status_code == 400
    assert "only the conversation workflow takes its messages by signal" in page.content.decode()
    empty = ops.post(
        "/runs/new/",
        {"workflow": "conversation", "prompt": " ", "task_queue": "q", "signal_with_start": "on"},
    )
    assert empty.status_code == 400
    assert "the first message is the signal&#x27;s argument" in empty.content.decode()
    assert AuditEntry.objects.filter(action="start", outcome="error").count() == 2

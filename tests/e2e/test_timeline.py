"""The run page's timeline, its agent view and the runs list in Chromium, on real runs:
one daphne and one traced bundled worker for the whole module."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect
from temporalio.api.enums.v1 import EventType

from dashboard.templatetags.runs_format import duration_ns
from telemetry.vocab import MODEL_ACTIVITY_TYPE
from tests.conftest import TemporalServer, WorkerProcess, connect_client
from tests.e2e.conftest import LiveDashboard, watch_problems
from tests.e2e.story_stack import in_thread, signed_in, story_stack, story_worker, wait_until
from worker.inputs import (
    REPLAY_WORKFLOW,
    AgentRunInput,
    ApprovalInput,
    ConversationInput,
    Decision,
    ReplayInput,
)
from worker.workflows import WORKFLOWS

pytestmark = pytest.mark.timeout(600)
__all__ = ["story_stack", "story_worker"]

LONG_WAIT_SECONDS = 60


def start(
    temporal_server: TemporalServer, worker: WorkerProcess, kind: str, arg: Any, workflow_id: str
) -> str:
    async def go() -> str:
        client = await connect_client(temporal_server.address)
        handle = await client.start_workflow(
            kind, arg, id=workflow_id, task_queue=worker.task_queue
        )
        return str(handle.result_run_id)

    return in_thread(go)


def result(temporal_server: TemporalServer, workflow_id: str, run_id: str) -> Any:
    async def go() -> Any:
        client = await connect_client(temporal_server.address)
        return await client.get_workflow_handle(workflow_id, run_id=run_id).result()

    return in_thread(go)


def story(page: Page, stack: LiveDashboard, workflow_id: str, run_id: str) -> dict[str, Any]:
    response = page.request.get(f"{stack.url}/api/runs/{workflow_id}/{run_id}/")
    assert response.ok, response.status
    data: dict[str, Any] = response.json()
    return data


def spans_arrived(page: Page, stack: LiveDashboard, workflow_id: str, run_id: str) -> bool:
    """Every model call of a closed run has its spans (the exporter batches every 100 ms)."""
    data = story(page, stack, workflow_id, run_id)
    calls = data["model_calls"]
    return bool(calls) and all(c["matched"] for c in calls) and data["status"] != "RUNNING"


def timeline_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate(
        """() => {
        const host = document.querySelector("[data-timeline]");
        const data = JSON.parse(document.getElementById(host.dataset.timeline).textContent);
        const [a, b] = host.dataset.window.split(",").map(Number);
        return {view: host.dataset.view, gaps: Number(host.dataset.gaps), start: a, end: b,
                duration: data.duration, attempts: data.attempts.length,
                widths: [...host.querySelectorAll("rect.tl-attempt")].map(r => r.getBBox().width)};
    }"""
    )
    return state


@pytest.fixture(scope="module")
def long_approval(
    story_worker: WorkerProcess, temporal_server: TemporalServer
) -> Iterator[dict[str, Any]]:
    """An approval that starts waiting when the module does, so its minute of waiting
    passes while the other tests run; the last test approves it."""
    workflow_id = f"e2e-wait-{uuid.uuid4().hex[:6]}"
    run_id = start(
        temporal_server,
        story_worker,
        "approval",
        ApprovalInput("Rotate the staging database credentials.", timeout_seconds=600),
        workflow_id,
    )
    yield {"workflow_id": workflow_id, "run_id": run_id, "started": time.monotonic()}


@pytest.fixture(autouse=True)
def _approval_waits_from_the_start(long_approval: dict[str, Any]) -> None:
    """Every test of the module starts the long approval (once) before it runs."""


def connected(locator: Locator, script: str) -> Any:
    """``script(element)`` on an element still in the page (retried while a swap detaches it)."""
    deadline = time.monotonic() + 10
    while True:
        value = locator.evaluate(f"e => e.isConnected ? [({script})(e)] : null")
        if value is not None:
            return value[0]
        assert time.monotonic() < deadline, "the element kept being replaced"
        time.sleep(0.1)


def test_runs_list_fits_1440_px_with_ellipsis_and_exact_tokens(
    story_stack: LiveDashboard,
    story_worker: WorkerProcess,
    temporal_server: TemporalServer,
    chromium: Browser,
    results_dir: Path,
) -> None:
    tag = uuid.uuid4().hex[:6]
    long_id = f"e2e-a-workflow-id-long-enough-to-need-an-ellipsis-in-its-cell-{tag}"
    start(
        temporal_server,
        story_worker,
        "triage",
        AgentRunInput("I was charged twice on invoice INV-2231", faults=["call=1:fail=1"]),
        long_id,
    )
    ok_id = f"e2e-list-{tag}"
    ok_run = start(
        temporal_server,
        story_worker,
        "triage",
        AgentRunInput("Please refund the duplicate charge on INV-2231"),
        ok_id,
    )
    result(temporal_server, ok_id, ok_run)
    context, page = signed_in(chromium, story_stack)
    problems = watch_problems(page)
    wait_until(lambda: spans_arrived(page, story_stack, ok_id, ok_run), 20, "spans")
    page.goto(f"{story_stack.url}/")
    row = page.locator("#runs-rows tr.run-row", has_text=long_id)
    expect(row).to_contain_text("Completed", timeout=20_000)
    error = row.locator(".error-text")
    expect(error).to_be_visible(timeout=20_000)
    widths = page.evaluate(
        """() => { const s = document.querySelector(".table-scroll");
        return [s.scrollWidth, s.clientWidth, document.documentElement.scrollWidth,
                document.documentElement.clientWidth]; }"""
    )
    assert widths[0] <= widths[1], widths
    assert widths[2] <= widths[3], widths
    # The long error ends in an ellipsis; the whole text is in its title and shows on focus.
    full = error.get_attribute("title") or ""
    assert len(full) > 40 and full.startswith(error.inner_text().rstrip("…")[:20])
    # One script per measurement: the live list may swap the row between a locator's
    # lookup and its evaluation, and a detached element has no computed style.
    cut = connected(
        error,
        """e => ({overflow: getComputedStyle(e).textOverflow,
                  clipped: e.scrollWidth > e.clientWidth})""",
    )
    assert cut == {"overflow": "ellipsis", "clipped": True}
    focused = connected(
        error,
        """e => { e.focus(); return {space: getComputedStyle(e).whiteSpace,
                                     fits: e.scrollWidth <= e.clientWidth + 1}; }""",
    )
    assert focused == {"space": "normal", "fits": True}
    wf = row.locator(".wf-id .trunc")
    assert connected(wf, "e => e.scrollWidth > e.clientWidth")
    assert long_id in (wf.get_attribute("title") or "")
    # Exact token numbers on hover.
    ok_row = page.locator("#runs-rows tr.run-row", has_text=ok_id)
    expect(ok_row).to_contain_text("Triage agent", timeout=20_000)
    tokens_in = story(page, story_stack, ok_id, ok_run)["totals"]["tokens_in"]
    expect(ok_row.locator(".tokens").first).to_have_attribute(
        "title", f"{tokens_in:,} input tokens"
    )
    page.screenshot(path=str(results_dir / "runs-list-1440.png"), full_page=True)
    assert problems == []
    context.close()


def test_failed_attempt_opens_its_error_and_zoom_keeps_bars_in_view(
    story_stack: LiveDashboard,
    story_worker: WorkerProcess,
    temporal_server: TemporalServer,
    chromium: Browser,
    results_dir: Path,
) -> None:
    workflow_id = f"e2e-retry-{uuid.uuid4().hex[:6]}"
    run_id = start(
        temporal_server,
        story_worker,
        "triage",
        AgentRunInput("Our dashboard sync is stuck.", faults=["call=1:fail=2"]),
        workflow_id,
    )
    result(temporal_server, workflow_id, run_id)
    context, page = signed_in(chromium, story_stack)
    problems = watch_problems(page, http_errors=False)
    wait_until(lambda: spans_arrived(page, story_stack, workflow_id, run_id), 20, "spans")
    page.goto(f"{story_stack.url}/runs/{workflow_id}/{run_id}/")
    expect(page.locator("[data-tl-hint]")).to_contain_text("Drag to pan")
    failed = page.locator(".tl-item:has(rect.tl-attempt.failed)")
    expect(failed).to_have_count(2)
    # Every bar is wide enough to hit; narrow ones carry a wider invisible target.
    for width in timeline_state(page)["widths"]:
        assert width >= 6
    failed.first.click()
    detail = page.locator("[data-tl-detail]")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text("call 1 · attempt 1/3")
    expect(detail.locator("[data-tl-error]")).to_contain_text("Injected model failure")
    expect(page.locator("#span-panel .sd-error")).to_contain_text("Injected model failure")
    page.screenshot(path=str(results_dir / "timeline-failed-attempt.png"), full_page=False)

    # + zooms around the selected attempt: the failed bars stay in view.
    page.get_by_role("button", name="Zoom in").click()
    page.get_by_role("button", name="Zoom in").click()
    state = timeline_state(page)
    assert state["view"] == "user"
    assert page.locator("rect.tl-attempt.failed").count() >= 1
    # Reset fits the whole run again; Shift + drag zooms to the range dragged.
    page.get_by_role("button", name="Reset", exact=True).click()
    assert timeline_state(page)["view"] == "fit"
    box = page.locator("[data-timeline]").bounding_box()
    first = page.locator("rect.tl-attempt").first.bounding_box()
    last = page.locator("rect.tl-attempt").last.bounding_box()
    assert box is not None and first is not None and last is not None
    y = box["y"] + 14  # on the time axis, clear of any bar
    page.keyboard.down("Shift")
    page.mouse.move(first["x"], y)
    page.mouse.down()
    # To halfway along the bars: from the first bar to the last could be the whole
    # run (a run whose first call starts and last call ends at its edges), which
    # is rightly the fitted view again.
    page.mouse.move((first["x"] + last["x"] + last["width"]) / 2, y, steps=8)
    page.mouse.up()
    page.keyboard.up("Shift")
    state = timeline_state(page)
    assert state["view"] == "user"
    assert 0 < state["end"] - state["start"] < state["duration"]
    # Ctrl + wheel zooms at the pointer.
    page.get_by_role("button", name="Reset", exact=True).click()
    page.mouse.move(first["x"] + first["width"] / 2, y)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    assert timeline_state(page)["view"] == "user"
    assert problems == []
    context.close()


def test_durations_read_the_same_in_the_browser_and_the_server(
    story_stack: LiveDashboard, chromium: Browser
) -> None:
    context, page = signed_in(chromium, story_stack)
    page.goto(f"{story_stack.url}/runs/new/")
    page.add_script_tag(url=f"{story_stack.url}/static/js/format.js")
    samples_ms = [0.04, 3.27, 9.94, 12.3, 999.2, 1234, 9_940, 59_940, 61_000, 244_217, 3_599_999]
    samples_ms += [3_600_000, 7_322_000, 172_799_000, 200_000_000]
    browser = page.evaluate("(v) => v.map(window.loomviewFormat.duration)", samples_ms)
    server = [duration_ns(round(ms * 1_000_000)) for ms in samples_ms]
    assert browser == server
    assert server[9] == "4m 04s" and server[5] == "1.2 s"
    context.close()


def test_live_view_refits_as_each_of_ten_runs_grows(
    story_stack: LiveDashboard,
    story_worker: WorkerProcess,
    temporal_server: TemporalServer,
    chromium: Browser,
) -> None:
    context, page = signed_in(chromium, story_stack)
    problems = watch_problems(page, http_errors=False)
    for number in range(10):
        workflow_id = f"e2e-live-{number}-{uuid.uuid4().hex[:6]}"
        run_id = start(
            temporal_server,
            story_worker,
            "triage",
            AgentRunInput("I was charged twice on invoice INV-2231"),
            workflow_id,
        )
        # Open the page at once, as "Start a run" does: the run has barely begun.
        page.goto(f"{story_stack.url}/runs/{workflow_id}/{run_id}/")
        expect(page.locator('#run-header [data-status="COMPLETED"]')).to_be_visible(timeout=30_000)

        def fitted() -> bool:
            state = timeline_state(page)
            calls = int(page.locator('[data-total="model_calls"]').inner_text())
            return (
                calls >= 3
                and state["attempts"] >= calls
                and state["view"] == "fit"
                and state["start"] <= 0.001
                and abs(state["end"] - state["duration"]) < 0.01
                and len(state["widths"]) >= calls
            )

        wait_until(fitted, 20, f"run {number} to be drawn whole")
        state = timeline_state(page)
        assert state["duration"] > 1, state  # not the first sub-millisecond window
    assert problems == []
    context.close()


def every_bundled_workflow(
    temporal_server: TemporalServer, worker: WorkerProcess, tag: str
) -> dict[str, tuple[str, str, list[str]]]:
    """One run of every workflow `python -m worker` registers, started together and
    driven to its end (the approval approved, the conversation ended); the replay runs
    the triage's first model call again. Returns {type: (workflow id, run id, the
    activity ids of its model calls, from Temporal's own history)}."""
    assert sorted(getattr(w, "__temporal_workflow_definition").name for w in WORKFLOWS) == sorted(
        ["triage", "approval", "resilient", "parallel", "conversation", "orchestrator",
         "specialist", REPLAY_WORKFLOW]
    )  # fmt: skip

    async def go() -> dict[str, tuple[str, str, list[str]]]:
        client = await connect_client(temporal_server.address)
        queue = worker.task_queue
        ids = {kind: f"e2e-agents-{kind}-{tag}" for kind in ("triage", "approval", "resilient",
               "parallel", "conversation", "orchestrator", REPLAY_WORKFLOW)}  # fmt: skip
        prompt = "I was charged twice on invoice INV-2231"
        plain = {
            kind: await client.start_workflow(
                kind, AgentRunInput(prompt), id=ids[kind], task_queue=queue
            )
            for kind in ("triage", "resilient", "parallel", "orchestrator")
        }
        approval = await client.start_workflow(
            "approval", ApprovalInput("Rotate the staging database credentials."),
            id=ids["approval"], task_queue=queue,
        )  # fmt: skip
        chat = await client.start_workflow(
            "conversation", ConversationInput(prompt="Plan three days in Porto."),
            id=ids["conversation"], task_queue=queue,
        )  # fmt: skip
        await chat.execute_update("send_message", "What should I pack?")
        await chat.signal("end")
        # Approved while it drafts: the decision waits for the draft.
        await approval.signal("approve", Decision(comment="ok", by="e2e"))
        await asyncio.gather(*(h.result() for h in [*plain.values(), approval, chat]))
        # The replay: the triage's first model call, as the activity took it.
        triage = await plain["triage"].fetch_history()
        first = next(
            e.activity_task_scheduled_event_attributes
            for e in triage.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        )
        model_input = json.loads(first.input.payloads[0].data)
        replay = await client.start_workflow(
            REPLAY_WORKFLOW, ReplayInput(model_input=model_input),
            id=ids[REPLAY_WORKFLOW], task_queue=queue,
        )  # fmt: skip
        await replay.result()
        runs = {kind: (ids[kind], str(h.result_run_id)) for kind, h in plain.items()}
        runs["approval"] = (ids["approval"], str(approval.result_run_id))
        runs["conversation"] = (ids["conversation"], str(chat.result_run_id))
        runs[REPLAY_WORKFLOW] = (ids[REPLAY_WORKFLOW], str(replay.result_run_id))
        # The orchestrator's children are the specialist's runs (the technical one's last).
        child = f"{ids['orchestrator']}-technical"
        runs["specialist"] = (
            child,
            str((await client.get_workflow_handle(child).describe()).run_id),
        )
        found: dict[str, tuple[str, str, list[str]]] = {}
        for kind, (workflow_id, run_id) in runs.items():
            history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
            calls = [
                e.activity_task_scheduled_event_attributes.activity_id
                for e in history.events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                and e.activity_task_scheduled_event_attributes.activity_type.name
                == MODEL_ACTIVITY_TYPE
            ]
            found[kind] = (workflow_id, run_id, calls)
        return found

    return in_thread(go)


def test_the_agent_view_shows_one_row_per_model_call_for_each_bundled_workflow(
    story_stack: LiveDashboard,
    story_worker: WorkerProcess,
    temporal_server: TemporalServer,
    chromium: Browser,
    results_dir: Path,
) -> None:
    runs = every_bundled_workflow(temporal_server, story_worker, uuid.uuid4().hex[:6])
    context, page = signed_in(chromium, story_stack)
    problems = watch_problems(page)
    for kind, (workflow_id, run_id, calls) in runs.items():
        assert calls, f"{kind} made no model call"
        assert len(set(calls)) == len(calls)

        def settled(workflow_id: str = workflow_id, run_id: str = run_id) -> bool:
            data = story(page, story_stack, workflow_id, run_id)
            return data["status"] != "RUNNING" and all(c["matched"] for c in data["model_calls"])

        wait_until(settled, 30, f"the {kind} run's spans")
        page.goto(f"{story_stack.url}/runs/{workflow_id}/{run_id}/?trace=agent")
        trace = page.locator("#run-trace")
        expect(trace).to_have_attribute("data-trace-view", "agent")
        rows = trace.locator(".span-row.call-row")
        expect(rows).to_have_count(len(calls))
        # Each row is one model call, linked to it; no call shows twice.
        hrefs = [rows.nth(i).get_attribute("href") or "" for i in range(len(calls))]
        shown = [re.sub(r"^.*/calls/([^/]+)/$", r"\1", href) for href in hrefs]
        assert sorted(shown) == sorted(calls), (kind, hrefs, calls)
        labels = rows.locator(".span-name").all_inner_texts()
        assert all(re.search(r" · call \d+", label) for label in labels), (kind, labels)
        assert len(set(labels)) == len(labels), (kind, labels)
        trace.screenshot(path=str(results_dir / f"agent-view-{kind}.png"))
    assert problems == []
    context.close()


def test_a_minute_long_wait_is_compressed_and_model_calls_stay_wide(
    story_stack: LiveDashboard,
    temporal_server: TemporalServer,
    long_approval: dict[str, Any],
    chromium: Browser,
    results_dir: Path,
) -> None:
    workflow_id, run_id = long_approval["workflow_id"], long_approval["run_id"]
    context, page = signed_in(chromium, story_stack)
    problems = watch_problems(page, http_errors=False)
    url = f"{story_stack.url}/runs/{workflow_id}/{run_id}/"
    page.goto(url)
    # While it waits: the timer with when it fires, and the open wait.
    timer_bar = page.locator('rect.tl-wait[data-wait="timer"]')
    expect(timer_bar).to_have_count(1, timeout=20_000)
    expect(page.locator('rect.tl-wait.open[data-wait="wait"]')).to_have_count(1)
    assert "fires at" in (timer_bar.locator("title").text_content() or "")
    page.screenshot(path=str(results_dir / "timeline-waiting.png"), full_page=False)

    # Approve once the wait (the approval's timer) has lasted a minute.
    waits = story(page, story_stack, workflow_id, run_id)["waits"]
    timer = next(w for w in waits if w["kind"] == "timer")
    assert timer["waiting"] and timer["fires_at"]
    began = datetime.fromisoformat(timer["start_time"])
    remaining = LONG_WAIT_SECONDS + 0.5 - (datetime.now(UTC) - began).total_seconds()
    if remaining > 0:
        time.sleep(remaining)

    async def approve() -> None:
        client = await connect_client(temporal_server.address)
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        await handle.signal("approve", Decision(comment="after a minute", by="e2e"))
        await handle.result()

    in_thread(approve)
    wait_until(lambda: spans_arrived(page, story_stack, workflow_id, run_id), 30, "spans")
    page.goto(url)
    expect(page.locator('#run-header [data-status="COMPLETED"]')).to_be_visible()
    data = story(page, story_stack, workflow_id, run_id)
    calls = data["model_calls"]
    assert len(calls) >= 3
    state = timeline_state(page)
    assert state["duration"] >= LONG_WAIT_SECONDS * 1000
    assert state["gaps"] >= 1
    (waited,) = [w for w in data["waits"] if w["kind"] == "timer"]
    assert waited["state"] == "canceled"  # the signal ended the wait before the timeout
    length = datetime.fromisoformat(waited["end_time"]) - datetime.fromisoformat(
        waited["start_time"]
    )
    assert length.total_seconds() >= LONG_WAIT_SECONDS
    labels = page.locator(".tl-gap text").all_text_contents()
    minute = [i for i, text in enumerate(labels) if re.fullmatch(r"\d+m \d\ds", text)]
    assert len(minute) == 1, labels  # the wait, marked with its real length
    gap = page.locator(".tl-gap").nth(minute[0])
    # At default zoom every model-call attempt is still at least 20 px wide.
    assert len(state["widths"]) >= len(calls)
    assert min(state["widths"]) >= 20, state["widths"]
    header = page.locator("#run-header [data-duration-ns]").inner_text()
    assert re.fullmatch(r"\d+m \d\ds", header), header
    page.screenshot(path=str(results_dir / "timeline-long-wait.png"), full_page=True)
    # The compressed minute opens at full length on a click: the calls become slivers.
    gap.locator("text").click()
    expanded = timeline_state(page)
    assert expanded["gaps"] < state["gaps"]
    labels = page.locator(".tl-gap text").all_text_contents()
    assert not [text for text in labels if re.fullmatch(r"\d+m \d\ds", text)]
    assert min(expanded["widths"]) < 20
    assert problems == []
    context.close()
    assert json.dumps(data)  # the API answered with the whole story

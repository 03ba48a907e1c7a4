"""The run page's timeline and the runs list in Chromium, on real runs: one daphne
and one traced bundled worker for the whole module."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from dashboard.templatetags.runs_format import duration_ns
from tests.conftest import TemporalServer, WorkerProcess, connect_client
from tests.e2e.conftest import LiveDashboard, watch_problems
from tests.e2e.story_stack import in_thread, signed_in, story_stack, story_worker, wait_until
from worker.inputs import AgentRunInput, ApprovalInput, Decision

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
    assert error.evaluate("e => getComputedStyle(e).textOverflow") == "ellipsis"
    assert error.evaluate("e => e.scrollWidth > e.clientWidth")
    error.focus()
    assert error.evaluate("e => getComputedStyle(e).whiteSpace") == "normal"
    assert error.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    wf = row.locator(".wf-id .trunc")
    assert wf.evaluate("e => e.scrollWidth > e.clientWidth")
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
    page.mouse.move(last["x"] + last["width"], y, steps=8)
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

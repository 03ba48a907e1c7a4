"""Comparing runs and replaying a model call in Chromium, against the real stack:
Temporal dev server, daphne, and the bundled worker exporting its spans to it."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import TemporalServer, WorkerProcess, connect_client
from tests.e2e.conftest import LiveDashboard
from tests.e2e.test_run_page import in_thread, log_in, stack, traced_worker, watch_problems
from worker.inputs import AgentRunInput

pytestmark = pytest.mark.timeout(300)
__all__ = ["stack", "traced_worker"]  # the run page tests' fixtures, shared

BILLING = "I was charged twice on invoice INV-2231, please refund the duplicate payment."
TECHNICAL = "Our dashboard sync is stuck and the app shows errors since this morning."


def start_triage(address: str, task_queue: str, prompts: list[str]) -> list[tuple[str, str]]:
    """Triage runs started one after the other (so their order is known), then awaited."""

    async def go() -> list[tuple[str, str]]:
        client = await connect_client(address)
        handles = []
        for prompt in prompts:
            handles.append(
                await client.start_workflow(
                    "triage",
                    AgentRunInput(prompt),
                    id=f"e2e-cmp-{uuid.uuid4().hex[:6]}",
                    task_queue=task_queue,
                )
            )
        for handle in handles:
            await handle.result()
        return [(h.id, str(h.result_run_id)) for h in handles]

    return in_thread(go)


def wait_for_calls(page: Page, url: str, calls: int) -> None:
    """The exporter batches every 100 ms: wait until the run page counts every model call."""
    deadline = time.monotonic() + 30
    while True:
        page.goto(url)
        shown = page.locator('[data-total="model_calls"]').inner_text()
        if int(shown or 0) >= calls:
            return
        assert time.monotonic() < deadline, f"{url} never showed {calls} model calls"
        page.wait_for_timeout(500)


def test_compare_two_triage_runs_from_the_runs_list(
    stack: LiveDashboard,
    temporal_server: TemporalServer,
    traced_worker: WorkerProcess,
    chromium: Browser,
    results_dir: Path,
) -> None:
    worker = traced_worker
    billing, technical = start_triage(
        temporal_server.address, worker.task_queue, [BILLING, TECHNICAL]
    )
    context = chromium.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    problems = watch_problems(page)
    log_in(page, stack)
    for workflow_id, run_id in (billing, technical):
        wait_for_calls(page, f"{stack.url}/runs/{workflow_id}/{run_id}/", 4)

    # Tick the two runs on the runs list, then Compare.
    page.goto(f"{stack.url}/")
    bar = page.locator("[data-compare-bar]")
    expect(bar.get_by_role("button", name="Compare")).to_be_disabled()
    for workflow_id, run_id in (technical, billing):
        page.locator(f'input[data-compare-pick][value="{workflow_id}/{run_id}"]').check()
    expect(bar).to_contain_text("2 runs picked")
    page.screenshot(path=str(results_dir / "compare-runs-list.png"))
    bar.get_by_role("button", name="Compare").click()
    expect(page).to_have_url(re.compile(r"/compare/\?a="))
    # The older run is A.
    expect(page.locator('[data-side="A"] .cmp-wf')).to_have_text(billing[0])
    expect(page.locator('[data-side="B"] .cmp-wf')).to_have_text(technical[0])

    # The handoff that went elsewhere, and the calls that followed it.
    handoff = page.locator('#cmp-handoffs [data-handoff-status="elsewhere"]')
    expect(handoff).to_contain_text("Billing specialist")
    expect(handoff).to_contain_text("Technical support")
    expect(page.locator('[data-call-status="elsewhere"]')).to_have_count(3)
    # The first differing call is open: the user's message and the handoff tool call, diffed.
    first = page.locator('details[data-call-status="changed"]').first
    expect(first).to_have_attribute("open", "")
    expect(first.locator("[data-message-status=changed] del").first).to_be_visible()
    expect(first.locator('[data-tool-status="changed"]')).to_contain_text(
        "transfer_to_technical_support"
    )
    expect(page.locator('[data-total="Model calls"] [data-delta]')).to_have_text("±0")
    page.screenshot(path=str(results_dir / "compare-page.png"), full_page=True)

    # Expand every call; the history shows every event on request, swapped in by htmx.
    page.get_by_role("button", name="Expand all").click()
    expect(page.locator("details.cmp-call:not([open])")).to_have_count(0)
    page.evaluate("window.__sameDocument = true")
    page.locator("#cmp-events").get_by_role("link", name="All events").click()
    expect(page.locator("#cmp-events .ev-fold")).to_have_count(0)
    expect(page.locator('#cmp-events [data-event-status="only_b"]')).to_have_count(3)
    assert page.evaluate("window.__sameDocument") is True
    settled = page.locator("#cmp-events:not(.htmx-settling):not(.htmx-swapping)")
    expect(settled).to_be_visible()
    page.wait_for_timeout(200)  # htmx settles the swapped section in 20 ms steps
    settled.screenshot(path=str(results_dir / "compare-events.png"))

    # From the technical run's page: compare with the previous run of its type.
    page.goto(f"{stack.url}/runs/{technical[0]}/{technical[1]}/")
    page.locator("#run-compare [data-compare-previous]").click()
    expect(page).to_have_url(re.compile(r"/compare/\?a="))
    expect(page.locator('[data-side="B"] .cmp-wf')).to_have_text(technical[0])
    expect(page.locator('[data-side="A"] .status')).to_be_visible()
    assert problems == []
    context.close()


def test_replay_a_call_and_run_again_with_edits(
    stack: LiveDashboard,
    temporal_server: TemporalServer,
    traced_worker: WorkerProcess,
    chromium: Browser,
    results_dir: Path,
) -> None:
    worker = traced_worker
    ((workflow_id, run_id),) = start_triage(temporal_server.address, worker.task_queue, [TECHNICAL])
    context = chromium.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    problems = watch_problems(page)
    log_in(page, stack)
    run_url = f"{stack.url}/runs/{workflow_id}/{run_id}/"
    wait_for_calls(page, run_url, 4)

    # The triage agent's call, from its generation span's panel (the raw span view).
    page.goto(f"{run_url}?trace=raw")
    page.locator(".span-row", has_text="chat loomview-demo-1").first.click()
    panel = page.locator("#span-panel")
    panel.locator("[data-replay-call]").click()
    expect(page.get_by_role("heading", name="Replay model call 1")).to_be_visible()
    editor = page.locator('textarea[name="input"]')
    assert TECHNICAL in editor.input_value()
    edited = [{"content": BILLING, "role": "user"}]
    editor.fill(json.dumps(edited, indent=2))
    page.locator('input[name="model"]').fill("loomview-demo-1")
    page.screenshot(path=str(results_dir / "replay-editor.png"), full_page=True)
    page.get_by_role("button", name="Replay", exact=True).click()
    expect(page).to_have_url(re.compile(r"/replays/\d+/$"))
    result = page.locator("#replay-result")
    expect(result).to_have_attribute("data-replay-status", "completed", timeout=30_000)
    # The replay handed off to billing; the original went to technical support.
    expect(page.locator('[data-column="b"] [data-output]')).to_contain_text(
        "transfer_to_billing_specialist"
    )
    expect(page.locator('[data-column="a"] [data-output]')).to_contain_text(
        "transfer_to_technical_support"
    )
    expect(page.locator("#replay-diff [data-message-status=changed] ins").first).to_be_visible()
    expect(page.locator('[data-column="b"] [data-cost]')).not_to_have_text("—")
    page.screenshot(path=str(results_dir / "replay-page.png"), full_page=True)

    # Listed on the run page.
    page.goto(run_url)
    expect(page.locator("#run-compare [data-replay]")).to_have_count(1)
    page.locator("#run-compare").screenshot(path=str(results_dir / "run-compare-card.png"))

    # Run again with an edited prompt, then compare with the original.
    page.locator("#run-actions").get_by_role("tab", name="Retry / reset").click()
    page.locator("#run-actions [data-run-again-edit]").click()
    box = page.locator('textarea[name="input"]')
    assert json.loads(box.input_value())["prompt"] == TECHNICAL
    box.fill(json.dumps({"prompt": BILLING, "faults": None}))
    page.get_by_role("button", name="Run again with this input").click()
    expect(page).to_have_url(re.compile(rf"/runs/{workflow_id}-again-[0-9a-f]{{6}}/"))
    expect(page.locator('#run-header [data-status="COMPLETED"]')).to_be_visible(timeout=30_000)
    page.locator("#run-compare").get_by_role(
        "link", name=re.compile("Compare with the original")
    ).click()
    expect(page.locator('[data-side="A"] .cmp-wf')).to_have_text(workflow_id)
    expect(page.locator('[data-call-status="elsewhere"]').first).to_be_visible()
    assert problems == []
    context.close()

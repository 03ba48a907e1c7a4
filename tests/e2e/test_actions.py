"""Acting on runs in Chromium against the real stack: start, signal, reset."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import TemporalServer, WorkerProcess
from tests.e2e.conftest import LiveDashboard, element_screenshot
from tests.e2e.test_run_page import log_in, stack, traced_worker, watch_problems

pytestmark = pytest.mark.timeout(240)
__all__ = ["stack", "traced_worker"]  # the run page tests' fixtures


def start_from_the_ui(
    page: Page, stack: LiveDashboard, workflow: str, prompt: str, task_queue: str, faults: str = ""
) -> str:
    page.goto(f"{stack.url}/")
    page.get_by_role("link", name="Start a run").click()
    expect(page.get_by_role("heading", name="Start a run")).to_be_visible()
    page.locator(f'input[name="workflow"][value="{workflow}"]').check()
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_label("Injected faults").fill(faults)
    page.get_by_label("Task queue").fill(task_queue)
    page.get_by_role("button", name="Start run").click()
    expect(page).to_have_url(re.compile(rf"/runs/{workflow}-[0-9a-f]{{8}}/[0-9a-f-]{{36}}/$"))
    return page.url


def test_operator_approves_from_the_run_page_and_it_finishes_live(
    stack: LiveDashboard,
    temporal_server: TemporalServer,
    traced_worker: WorkerProcess,
    chromium: Browser,
    results_dir: Path,
) -> None:
    worker = traced_worker
    context = chromium.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    problems = watch_problems(page)
    log_in(page, stack)
    page.goto(f"{stack.url}/runs/new/")
    page.screenshot(path=str(results_dir / "actions-start-page.png"), full_page=True)
    start_from_the_ui(
        page, stack, "approval", "Rotate the staging database credentials.", worker.task_queue
    )
    expect(page.locator('#run-header [data-status="RUNNING"]')).to_be_visible()
    page.evaluate("window.__sameDocument = true")

    card = page.locator("#run-actions")
    expect(card.get_by_role("tab", name="Signal")).to_have_attribute("aria-selected", "true")
    # The workflow's own signal definitions, with the approval payload filled in.
    signal = card.locator('select[name="name"]').first
    expect(signal.locator("option")).to_have_text(["approve", "reject"])
    payload = card.locator("#payload-signal")
    expect(payload).to_have_value('{"comment": "Looks good", "by": "admin"}')
    # What is being approved, without running a query: the draft, the wait, the handlers.
    waits = page.locator("#run-waiting")
    expect(waits.locator("[data-last-output]")).to_contain_text(
        "Rotate the staging database credentials.", timeout=20_000
    )
    expect(waits.locator('[data-wait="message"]')).to_be_visible()
    expect(waits.locator('[data-wait="timer"]')).to_contain_text("fires")
    expect(waits.locator("[data-handler]")).to_have_text(["signal approve", "signal reject"])
    element_screenshot(waits, results_dir / "actions-waiting-for.png")
    # The drafting model call is pending or done; "Right now" shows what the run waits on.
    expect(page.locator("#run-now")).to_contain_text("Stack trace")
    expect(page.locator("#run-now [data-stack-trace]")).to_be_visible(timeout=15_000)
    page.screenshot(path=str(results_dir / "actions-waiting.png"), full_page=True)

    payload.fill('{"comment": "Ship it from the browser", "by": "admin"}')
    card.get_by_role("button", name="Send signal").click()
    expect(page.locator("[data-action-notice]")).to_have_text("Signal approve sent.")
    # The run finishes and the page says so without a reload.
    expect(page.locator('#run-header [data-status="COMPLETED"]')).to_be_visible(timeout=30_000)
    expect(page.locator("#run-header")).to_contain_text("Ship it from the browser")
    # The card follows the run's status: a closed run offers queries and retries only.
    expect(page.locator("#run-actions [data-tab]")).to_have_text(["Query", "Retry / reset"])
    expect(page.locator("#run-actions .audit-mini")).to_contain_text("signal approve")
    expect(page.locator("#run-now")).to_be_hidden()
    expect(page.locator("#run-waiting")).to_be_hidden()
    assert page.evaluate("window.__sameDocument") is True
    element_screenshot(page.locator("#run-actions"), results_dir / "actions-card-completed.png")
    page.screenshot(path=str(results_dir / "actions-approved.png"), full_page=True)

    # The closed run still answers queries, shown in the card.
    page.locator("#run-actions").get_by_role("tab", name="Query").click()
    page.locator("#run-actions").get_by_role("button", name="Run query").click()
    expect(page.locator("[data-action-result]")).to_contain_text('"state": "done"')

    page.goto(f"{stack.url}/audit/")
    # The start and the signal; the query only looked, so it is not in the audit log.
    expect(page.locator(".audit-table tbody tr")).to_have_count(2)
    expect(page.locator(".audit-table")).to_contain_text("signal")
    expect(page.locator(".audit-table")).not_to_contain_text("query")
    page.screenshot(path=str(results_dir / "actions-audit.png"), full_page=True)
    assert problems == []
    context.close()


def test_reset_a_failed_run_to_before_its_failing_model_call(
    stack: LiveDashboard,
    temporal_server: TemporalServer,
    traced_worker: WorkerProcess,
    chromium: Browser,
    results_dir: Path,
) -> None:
    worker = traced_worker
    context = chromium.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    problems = watch_problems(page)
    log_in(page, stack)
    old_url = start_from_the_ui(
        page, stack, "triage", "My dashboard sync is stuck", worker.task_queue, "call=2:fatal"
    )
    expect(page.locator('#run-header [data-status="FAILED"]')).to_be_visible(timeout=30_000)
    card = page.locator("#run-actions")
    card.get_by_role("tab", name="Retry / reset").click()
    point = card.locator('select[name="event_id"]')
    options = point.locator("option").all_inner_texts()
    assert [o.split(" (")[0] for o in options] == [
        "Before model call 1",
        "Before model call 2",
        "Last good point before the failure",
    ]
    point.select_option(label=options[1])
    # No reason, no reset: the browser asks for one.
    card.get_by_role("button", name="Reset run").click()
    expect(page).to_have_url(old_url)
    card.get_by_placeholder("Why reset?").fill("the model outage is over")
    page.screenshot(path=str(results_dir / "actions-reset-form.png"), full_page=True)
    card.get_by_role("button", name="Reset run").click()

    # htmx sends us to the new run, which links back to the old one.
    expect(page).not_to_have_url(old_url, timeout=15_000)
    new_url = page.url
    back = page.locator("#run-actions .run-link", has_text="Reset from")
    expect(back).to_be_visible()
    # Model call 2 runs again in the new run; its input still asks for the fatal fault.
    expect(page.locator("#run-history")).to_contain_text("activity 2", timeout=15_000)
    expect(page.locator('#run-header [data-status="FAILED"]')).to_be_visible(timeout=30_000)
    page.screenshot(path=str(results_dir / "actions-reset-new-run.png"), full_page=True)
    back.click()
    expect(page).to_have_url(old_url)
    forward = page.locator("#run-actions .run-link", has_text="Reset to")
    expect(forward).to_be_visible()
    assert new_url.endswith(forward.get_attribute("href") or "-")
    assert problems == []
    context.close()

"""The runs list against the real stack: Temporal dev server, a traced worker, daphne, Chromium."""

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import TEMPORAL_BIN, TemporalServer, WorkerFactory, WorkerProcess
from tests.e2e.conftest import LiveDashboard, log_in, running_dashboard, watch_problems

DAPHNE = [sys.executable, "-m", "daphne", "-b", "127.0.0.1"]


@pytest.fixture
def traced_stack(temporal_server: TemporalServer, tmp_path: Path) -> Iterator[LiveDashboard]:
    """daphne reading the real Temporal server, with its own database."""
    with running_dashboard(tmp_path, temporal_server.address) as live:
        yield live


def start_workflow(address: str, worker: WorkerProcess, kind: str, workflow_id: str) -> None:
    subprocess.run(
        [
            *(str(TEMPORAL_BIN), "workflow", "start", "--address", address),
            *("--task-queue", worker.task_queue, "--type", kind, "--workflow-id", workflow_id),
            *("--input", json.dumps({"prompt": "I was charged twice on invoice INV-2231"})),
        ],
        check=True,
        capture_output=True,
    )


def test_runs_list_filters_and_live_updates(
    traced_stack: LiveDashboard,
    worker_factory: WorkerFactory,
    chromium: Browser,
    results_dir: Path,
) -> None:
    worker = worker_factory(
        LOOMVIEW_TRACING="on",
        LOOMVIEW_OTLP_ENDPOINT=f"{traced_stack.url}/v1/traces",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    tag = uuid.uuid4().hex[:6]
    address = traced_stack.temporal_address
    start_workflow(address, worker, "triage", f"e2e-triage-{tag}")
    start_workflow(address, worker, "parallel", f"e2e-parallel-{tag}")
    start_workflow(address, worker, "resilient", f"e2e-resilient-{tag}")

    context = chromium.new_context(viewport={"width": 1440, "height": 860})
    page = context.new_page()
    problems = watch_problems(page)
    log_in(page, traced_stack)
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()

    rows = page.locator("#runs-rows tr.run-row")
    triage_row = rows.filter(has_text=f"e2e-triage-{tag}")
    expect(triage_row).to_have_count(1)
    expect(rows.filter(has_text=f"e2e-parallel-{tag}")).to_have_count(1)
    # Spans arrive and the rows fill in live: agents, model calls, tokens, status.
    expect(triage_row).to_contain_text("Completed", timeout=20_000)
    expect(triage_row).to_contain_text("Triage agent", timeout=10_000)
    expect(rows.filter(has_text=f"e2e-resilient-{tag}")).to_contain_text(
        "Completed", timeout=30_000
    )
    page.wait_for_timeout(1500)
    page.screenshot(path=str(results_dir / "runs-list.png"), full_page=True)

    # Filter by workflow type: htmx swaps the panel and pushes the URL, no reload.
    page.evaluate("window.__noReload = true")
    page.evaluate(
        "window.__wsOpens = 0;"
        "document.addEventListener('htmx:wsOpen', () => { window.__wsOpens += 1; });"
    )
    page.get_by_label("Workflow type").fill("parallel")
    expect(page).to_have_url(
        f"{traced_stack.url}/?status=&type=parallel&agent=&range=&since=&until=&health=&q="
    )
    expect(rows.filter(has_text=f"e2e-triage-{tag}")).to_have_count(0)
    expect(rows.filter(has_text=f"e2e-parallel-{tag}")).to_have_count(1)
    assert page.evaluate("window.__noReload") is True
    page.screenshot(path=str(results_dir / "runs-list-filtered.png"), full_page=True)

    # A run started now appears without a reload, within 2 s.
    opened = page.evaluate("window.__wsOpens")
    page.get_by_label("Workflow type").fill("")
    expect(page).to_have_url(
        f"{traced_stack.url}/?status=&type=&agent=&range=&since=&until=&health=&q="
    )
    expect(rows.filter(has_text=f"e2e-triage-{tag}")).to_have_count(1)
    # The swapped panel's websocket is open (the server joined it to the group
    # before accepting), so the clock starts when live updates can flow.
    page.wait_for_function("n => window.__wsOpens > n", arg=opened)
    started = time.monotonic()
    start_workflow(address, worker, "triage", f"e2e-new-{tag}")
    expect(rows.filter(has_text=f"e2e-new-{tag}")).to_have_count(1, timeout=2000)
    assert time.monotonic() - started < 2.5
    assert page.evaluate("window.__noReload") is True
    expect(rows.first).to_contain_text(f"e2e-new-{tag}")
    expect(rows.filter(has_text=f"e2e-new-{tag}")).to_contain_text("Completed", timeout=20_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(results_dir / "runs-list-live.png"), full_page=True)

    assert problems == []
    context.close()

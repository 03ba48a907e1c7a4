"""The runs list against the real stack: Temporal dev server, a traced worker, daphne, Chromium."""

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.conftest import TEMPORAL_BIN, TemporalServer, WorkerFactory, WorkerProcess
from tests.e2e.conftest import ADMIN_PASSWORD, BASE_DIR, LiveDashboard, _free_port, _wait_healthy

DAPHNE = [sys.executable, "-m", "daphne", "-b", "127.0.0.1"]


@pytest.fixture
def traced_stack(temporal_server: TemporalServer, tmp_path: Path) -> Iterator[LiveDashboard]:
    """daphne reading the real Temporal server, with its own database."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'runs-e2e.sqlite3'}",
        "LOOMVIEW_DATA_DIR": str(tmp_path),
        "LOOMVIEW_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "TEMPORAL_ADDRESS": temporal_server.address,
        "TEMPORAL_NAMESPACE": "default",
        "PYTHONPATH": str(BASE_DIR),
    }
    manage = [sys.executable, str(BASE_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=BASE_DIR, check=True)
    subprocess.run([*manage, "ensure_admin"], env=env, cwd=BASE_DIR, check=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "daphne.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*DAPHNE, "-p", str(port), "dashboard.asgi:application"],
            env=env,
            cwd=BASE_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(url, server, log)
        yield LiveDashboard(url, "admin", ADMIN_PASSWORD, temporal_server.address)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


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


def watch_for_problems(page: Page) -> list[str]:
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "response",
        lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None,
    )
    return problems


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
    problems = watch_for_problems(page)
    page.goto(f"{traced_stack.url}/login/")
    page.get_by_label("Username").fill(traced_stack.username)
    page.get_by_label("Password").fill(traced_stack.password)
    page.get_by_role("button", name="Sign in").click()
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
    page.get_by_label("Workflow type").fill("parallel")
    expect(page).to_have_url(
        f"{traced_stack.url}/?status=&type=parallel&agent=&range=&since=&until=&q="
    )
    expect(rows.filter(has_text=f"e2e-triage-{tag}")).to_have_count(0)
    expect(rows.filter(has_text=f"e2e-parallel-{tag}")).to_have_count(1)
    assert page.evaluate("window.__noReload") is True
    page.screenshot(path=str(results_dir / "runs-list-filtered.png"), full_page=True)

    # A run started now appears without a reload, within 2 s.
    page.get_by_label("Workflow type").fill("")
    expect(page).to_have_url(f"{traced_stack.url}/?status=&type=&agent=&range=&since=&until=&q=")
    expect(rows.filter(has_text=f"e2e-triage-{tag}")).to_have_count(1)
    page.wait_for_timeout(500)  # the websocket of the swapped panel reconnects
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

"""One real stack per browser-test module: the Temporal dev server, daphne and one
bundled worker exporting its spans to that daphne, shared by the module's tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize

from tests.conftest import TemporalServer, WorkerProcess, new_worker_process
from tests.e2e.conftest import LiveDashboard, log_in, running_dashboard

T = TypeVar("T")
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}


def in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run Temporal client calls on their own loop: sync Playwright owns the main thread's."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def module_worker(
    temporal_server: TemporalServer, stack: LiveDashboard, tmp: Path, **overrides: str
) -> Iterator[WorkerProcess]:
    """The bundled worker on a fresh task queue, tracing to the stack's receiver."""
    settings = {
        "LOOMVIEW_DEMO_LATENCY_MS": "80",
        "LOOMVIEW_TRACING": "on",
        "LOOMVIEW_OTLP_ENDPOINT": f"{stack.url}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        **overrides,
    }
    worker = new_worker_process(temporal_server.address, tmp, env=settings)
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def story_stack(
    temporal_server: TemporalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveDashboard]:
    with running_dashboard(tmp_path_factory.mktemp("e2e-story"), temporal_server.address) as live:
        yield live


@pytest.fixture(scope="module")
def story_worker(
    temporal_server: TemporalServer,
    story_stack: LiveDashboard,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    yield from module_worker(temporal_server, story_stack, tmp_path_factory.mktemp("worker"))


def signed_in(chromium: Browser, stack: LiveDashboard) -> tuple[BrowserContext, Page]:
    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    log_in(page, stack)
    return context, page


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)

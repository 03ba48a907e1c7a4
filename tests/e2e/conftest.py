"""A real daphne server and Debian's Chromium, for browser tests.

Chromium is launched by hand instead of through pytest-playwright's fixtures:
the project never downloads Playwright's own browser builds.
"""

import atexit
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.conftest import STARTUP_TIMEOUT, free_port

BASE_DIR = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_PASSWORD = "e2e-admin-password-4821"


@dataclass(frozen=True)
class LiveDashboard:
    url: str
    username: str
    password: str
    temporal_address: str


def _wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"daphne exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"daphne did not become healthy:\n{log.read_text()}")


def _dashboard_env(data_dir: Path, temporal_address: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{data_dir / 'e2e.sqlite3'}",
        "LOOMVIEW_DATA_DIR": str(data_dir),
        "LOOMVIEW_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "LOOMVIEW_DEBUG": "0",
        "TEMPORAL_ADDRESS": temporal_address,
        "TEMPORAL_NAMESPACE": "default",
        "PYTHONPATH": str(BASE_DIR),
    }


_template: Path | None = None


def _copy_of_a_migrated_database(target: Path) -> None:
    """A copy of one database migrated, with the admin user, once per session.

    ``migrate`` and ``ensure_admin`` (a password hash) are two Django start-ups
    and seconds of CPU; every dashboard gets its own copy, so none shares state.
    """
    global _template
    if _template is None:
        directory = Path(tempfile.mkdtemp(prefix="loomview-e2e-template-"))
        atexit.register(shutil.rmtree, directory, True)
        env = _dashboard_env(directory, "127.0.0.1:1")
        manage = [sys.executable, str(BASE_DIR / "manage.py")]
        subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=BASE_DIR, check=True)
        subprocess.run([*manage, "ensure_admin"], env=env, cwd=BASE_DIR, check=True)
        _template = directory / "e2e.sqlite3"
    source, copy = sqlite3.connect(_template), sqlite3.connect(target)
    try:
        source.backup(copy)  # consistent even with a WAL beside the file
    finally:
        source.close()
        copy.close()


@contextmanager
def running_dashboard(data_dir: Path, temporal_address: str) -> Iterator[LiveDashboard]:
    """daphne serving the dashboard on a free port, with its own migrated database."""
    env = _dashboard_env(data_dir, temporal_address)
    _copy_of_a_migrated_database(data_dir / "e2e.sqlite3")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "daphne.log"
    daphne = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as log_handle:
        server = subprocess.Popen(
            [*daphne, "dashboard.asgi:application"],
            env=env,
            cwd=BASE_DIR,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(url, server, log)
        yield LiveDashboard(url, "admin", ADMIN_PASSWORD, temporal_address)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="session")
def live_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDashboard]:
    """The dashboard with no Temporal behind it (nothing listens at its address)."""
    with running_dashboard(tmp_path_factory.mktemp("e2e-data"), f"127.0.0.1:{free_port()}") as live:
        yield live


def watch_problems(page: Page, http_errors: bool = True) -> list[str]:
    """Console errors, page errors and (optionally) HTTP errors the page runs into."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    if http_errors:
        page.on(
            "response",
            lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None,
        )
    return problems


def log_in(page: Page, live: LiveDashboard) -> None:
    page.goto(f"{live.url}/login/")
    page.get_by_label("Username").fill(live.username)
    page.get_by_label("Password").fill(live.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live.url}/")


# Function scope on purpose: sync Playwright runs an event loop in the main
# thread while it is open, which would break every async test that follows.
@pytest.fixture
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def results_dir() -> Path:
    path = BASE_DIR / "test-results"
    path.mkdir(exist_ok=True)
    return path


def element_screenshot(locator: Locator, path: Path, attempts: int = 4) -> None:
    """A screenshot of a live section: one the page swaps in (htmx, a live update)
    while the shot is taken is taken again, from the section now there."""
    for attempt in range(attempts):
        try:
            locator.screenshot(path=str(path))
            return
        except PlaywrightError as error:
            if "not attached" not in str(error) or attempt + 1 == attempts:
                raise

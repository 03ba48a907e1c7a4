"""Forwarding on the real stack: worker → daphne's receiver → store → ``runforwarder`` → collectors.

The gRPC collector is down while runs produce spans; the forwarder, then the
whole dashboard (daphne and forwarder), are killed with SIGKILL and restarted
in between; when the collector comes back it gets every
stored span, ids and attributes unchanged, and the Exports page showed the
backlog and the error meanwhile. A collector that rejects everything shows its
error without holding up the other one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from temporalio.client import Client

from tests.conftest import ROOT, WorkerFactory, free_port, wait_for_port
from tests.tracing.collector import Collector, running_collector
from tests.tracing.grpc_collector import running_grpc_collector
from worker.inputs import AgentRunInput

pytestmark = pytest.mark.timeout(300)

SECRET = "grpc-api-key-do-not-show-7731"
PASSWORD = "forward-stack-password-1234"
DAPHNE = [sys.executable, "-m", "daphne", "-b", "127.0.0.1"]


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    db: Path
    log_dir: Path
    port: int
    forwarder: subprocess.Popen[bytes] | None = None
    daphne: subprocess.Popen[bytes] | None = None

    def start_daphne(self) -> None:
        with (self.log_dir / "daphne.log").open("ab") as log:
            self.daphne = subprocess.Popen(
                [*DAPHNE, "-p", str(self.port), "dashboard.asgi:application"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port)

    def kill_dashboard(self) -> None:
        """SIGKILL both dashboard processes: the web server and the forwarder."""
        for process in (self.daphne, self.forwarder):
            assert process is not None
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

    def start_forwarder(self) -> None:
        with (self.log_dir / "forwarder.log").open("ab") as log:
            self.forwarder = subprocess.Popen(
                [sys.executable, "manage.py", "runforwarder"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill_forwarder(self) -> None:
        assert self.forwarder is not None
        self.forwarder.send_signal(signal.SIGKILL)
        self.forwarder.wait(timeout=10)

    def spans(self) -> dict[tuple[str, str], dict[str, Any]]:
        with sqlite3.connect(self.db) as db:
            rows = db.execute("SELECT trace_id, span_id, name, data FROM tracing_span").fetchall()
        return {(t, s): {"name": n, **json.loads(d)} for t, s, n, d in rows}

    def session(self) -> requests.Session:
        session = requests.Session()
        session.get(f"{self.url}/login/")
        session.post(
            f"{self.url}/login/",
            data={
                "username": "admin",
                "password": PASSWORD,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
        ).raise_for_status()
        return session


@pytest.fixture
def http_rejecting() -> Iterator[Collector]:
    with running_collector(status=400) as collector:
        yield collector


@pytest.fixture
def grpc_port() -> int:
    return free_port()


@pytest.fixture
def stack(tmp_path: Path, grpc_port: int, http_rejecting: Collector) -> Iterator[Stack]:
    db = tmp_path / "stack.sqlite3"
    exporters = [
        {
            "name": "backend",
            "endpoint": f"http://127.0.0.1:{grpc_port}",
            "protocol": "grpc",
            "headers": {"x-api-key": SECRET},
        },
        {"name": "rejecting", "endpoint": http_rejecting.url, "protocol": "http/json"},
    ]
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{db}",
        "LOOMVIEW_DATA_DIR": str(tmp_path),
        "LOOMVIEW_ADMIN_PASSWORD": PASSWORD,
        "LOOMVIEW_EXPORTERS": json.dumps(exporters),
        "LOOMVIEW_FORWARDER_LEASE_SECONDS": "3",
        "PYTHONPATH": str(ROOT),
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True)
    subprocess.run([*manage, "ensure_admin"], env=env, cwd=ROOT, check=True, capture_output=True)
    port = free_port()
    running = Stack(url=f"http://127.0.0.1:{port}", env=env, db=db, log_dir=tmp_path, port=port)
    try:
        running.start_daphne()
        running.start_forwarder()
        yield running
    finally:
        for process in (running.forwarder, running.daphne):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=15)


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def collector_row(html: str, name: str) -> str:
    return html.split(f'id="collector-{name}"')[1].split("</tr>")[0]


def cells(row: str) -> list[str]:
    return [
        re.sub(r"<[^>]+>", " ", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    ]


async def run_triage(client: Client, task_queue: str, stack: Stack) -> None:
    before = len(stack.spans())
    handle = await client.start_workflow(
        "triage",
        AgentRunInput("The sync is stuck with errors"),
        id=f"test-forward-{uuid.uuid4().hex[:6]}",
        task_queue=task_queue,
    )
    await handle.result()
    wait(
        lambda: any(
            s["name"] == "RunWorkflow:triage"
            and s["attributes"].get("temporal.workflow.id") == handle.id
            for s in stack.spans().values()
        ),
        60,
        "the run's spans",
    )
    assert len(stack.spans()) > before


async def test_outage_and_forwarder_restart_lose_nothing(
    stack: Stack,
    temporal_client: Client,
    worker_factory: WorkerFactory,
    grpc_port: int,
    http_rejecting: Collector,
) -> None:
    worker = worker_factory(
        LOOMVIEW_TRACING="on",
        LOOMVIEW_OTLP_ENDPOINT=f"{stack.url}/v1/traces",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    session = stack.session()

    # The collector is down: spans pile up, the page shows the backlog and the error.
    await run_triage(temporal_client, worker.task_queue, stack)

    def page() -> str:
        return session.get(f"{stack.url}/exports/").text

    wait(lambda: "UNAVAILABLE" in collector_row(page(), "backend"), 30, "the outage error")
    html = page()
    backend = cells(collector_row(html, "backend"))
    assert SECRET not in html and "x-api-key: ••••••" in html
    assert backend[3].startswith("retrying")
    assert int(backend[5]) == len(stack.spans()) and int(backend[4]) == 0  # all pending
    assert backend[7].endswith("s")  # lag shown

    # The permanently rejecting collector shows why and does not retry.
    wait(lambda: "HTTP 400" in collector_row(page(), "rejecting"), 30, "the rejection")

    def all_rejected() -> bool:
        # Batches are rejected one after another (spans awaiting an ancestor come last).
        return int(cells(collector_row(page(), "rejecting"))[6]) == len(stack.spans())

    wait(all_rejected, 30, "every span rejected")
    rejecting = cells(collector_row(page(), "rejecting"))
    assert "HTTP 400" in rejecting[8] and int(rejecting[5]) == 0

    # The forwarder dies; more runs happen; a new forwarder takes over.
    stack.kill_forwarder()
    await run_triage(temporal_client, worker.task_queue, stack)
    stack.start_forwarder()
    # Then the whole dashboard is killed and restarted, still during the outage.
    stack.kill_dashboard()
    stack.start_daphne()
    stack.start_forwarder()
    session = stack.session()
    await run_triage(temporal_client, worker.task_queue, stack)

    with running_grpc_collector(grpc_port) as backend_collector:
        stored = stack.spans()
        wait(
            lambda: {(s.trace_id, s.span_id) for s in backend_collector.spans} >= set(stored),
            120,
            "every stored span at the collector",
        )
        for span in backend_collector.spans:
            row = stored[(span.trace_id, span.span_id)]
            assert row["attributes"].items() <= span.attributes.items()
            assert span.attributes.get("temporal.workflow.id"), span.name
        assert all(m.get("x-api-key") == SECRET for m in backend_collector.metadata)
        wait(lambda: "up to date" in collector_row(page(), "backend"), 30, "the page to catch up")
        backend = cells(collector_row(page(), "backend"))
        assert int(backend[4]) == len(stored) and int(backend[5]) == 0

    assert http_rejecting.spans == []

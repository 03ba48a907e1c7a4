"""Server time of the compare page for two runs with 500 model calls each.

    .venv/bin/python bench/compare.py [--requests 50] [--calls 500] [--mode history|spans]

Builds its own database in a temporary directory with two triage-shaped runs
made by bench/run_page.py's generator (about 8 spans per call, every 25th call
retried once): run A as the run page benchmark has it, run B the same run told
differently (every 10th call asked and answered something else, other calls
retried). It then times ``GET /compare/?a=<A>&b=<B>`` in-process with Django's
test client: both runs loaded and built as their run pages are, their calls,
handoffs and histories aligned, every diff computed and rendered.

Modes:
- ``history`` (default): both histories sit in the history cache as serialized
  protobuf, as they do for closed runs after their first view; Temporal is
  never contacted.
- ``spans``: Temporal is unreachable (a closed port), so both runs are built
  from the span store alone, under their banners.

Target: p95 <= 800 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import run_page  # noqa: E402  (a sibling script: bench/ is the script's directory on sys.path)

TARGET_P95_MS = 800.0
A = ("bench-compare-a", "01a20000-0000-7000-8000-00000000000a")
B = ("bench-compare-b", "01a20000-0000-7000-8000-00000000000b")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--mode", choices=("history", "spans"), default="history")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loomview-bench-") as tmp:
        run_page._setup(Path(tmp))
        from django.contrib.auth.models import User
        from django.core.cache import cache
        from django.test import Client
        from google.protobuf import json_format
        from temporalio.api.history.v1 import History

        from dashboard.run_page import _cache_key
        from tracing.models import Span

        counts = []
        for (workflow_id, run_id), trace_id, variant in ((A, "a" * 32, 0), (B, "c" * 32, 1)):
            spans, events = run_page.generate(
                args.calls, workflow_id, run_id, trace_id=trace_id, variant=variant
            )
            Span.objects.bulk_create(spans, batch_size=500)
            counts.append((len(spans), len(events)))
            if args.mode == "history":
                history = json_format.ParseDict({"events": events}, History())
                cache.set(_cache_key(workflow_id, run_id), history.SerializeToString(), None)
        user = User.objects.create_user("bench", password="bench-password-1")
        client = Client()
        client.force_login(user)
        url = "/compare/?" + urlencode({"a": "/".join(A), "b": "/".join(B)})
        for _ in range(3):  # warm caches, templates, connections
            response = client.get(url)
            assert response.status_code == 200, response.status_code
        size = len(response.content)
        page = response.content.decode()
        differing = page.count('data-call-status="changed"')
        timings: list[float] = []
        for _ in range(args.requests):
            started = time.perf_counter()
            response = client.get(url)
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        load = os.getloadavg()[0]
        timings.sort()
        p50 = statistics.median(timings)
        p95 = timings[max(0, round(0.95 * len(timings)) - 1)]
        spans_each = "/".join(str(c[0]) for c in counts)
        events_each = "/".join(str(c[1]) for c in counts) if args.mode == "history" else "0/0"
        print(
            f"compare page, 2 x {args.calls} model calls ({differing} differ), "
            f"{spans_each} spans, {events_each} history events, mode={args.mode}: "
            f"{args.requests} requests, p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
            f"max {timings[-1]:.0f} ms, page {size // 1024} KiB "
            f"(target p95 <= {TARGET_P95_MS:.0f} ms); load average {load:.2f} (1 min)"
        )
        return 0 if p95 <= TARGET_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())

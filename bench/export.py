"""Forwarding benchmark: spans/s from the span store to a local OTLP/gRPC receiver.

Target: at least 10,000 spans/s for one collector.

Migrates a fresh SQLite database, stores realistic agent spans through the
real ingest path (the batches of bench/ingest.py: 512 spans, 1-8 KB of
attributes each), starts an OTLP/gRPC receiver (grpcio + opentelemetry-proto's
TraceServiceServicer) in a separate process, then times the forwarder's
per-collector loop (``tracing.forwarder.step``: read after the cursor, rebuild,
redact, send, move the cursor) until nothing is pending, and checks that the
receiver got every span once.

    .venv/bin/python bench/export.py [--spans 51200] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_SPANS_PER_SECOND = 10_000
sys.path.insert(0, str(ROOT))
# bench/ is not a package: its scripts import each other as top-level modules.
sys.path.insert(0, str(ROOT / "bench"))


def serve(port: int, out: Path) -> None:
    """The receiver process: counts spans and span ids, writes them out on SIGTERM."""
    import grpc  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    ids: set[bytes] = set()
    received = [0]

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> ExportTraceServiceResponse:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        ids.add(span.trace_id + span.span_id)
                        received[0] += 1
            return ExportTraceServiceResponse()

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()

    def stop(signum: int, frame: Any) -> None:
        out.write_text(f"{received[0]} {len(ids)}")
        server.stop(grace=None)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    server.wait_for_termination()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=100 * 512)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.out)
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="loomview-export-bench-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["LOOMVIEW_DATA_DIR"] = str(tmp)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from ingest import SPANS_PER_BATCH, build_batch, free_port

    from tracing import forwarder, otlp, store, transport
    from tracing.exporters import GRPC, Exporter
    from tracing.models import ExportCursor, Span

    call_command("migrate", verbosity=0)
    started = time.monotonic()
    nonce = os.urandom(8)
    for i in range(max(1, args.spans // SPANS_PER_BATCH)):
        body = build_batch(i % 8, nonce).replace(nonce, os.urandom(8))
        store.ingest(otlp.decode(body, otlp.PROTOBUF).rows)
    total = Span.objects.count()
    print(f"stored {total:,} spans in {time.monotonic() - started:.1f} s")

    port = free_port()
    counts = tmp / "received.txt"
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--out", str(counts)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    exporter = Exporter(
        name="bench",
        endpoint=f"http://127.0.0.1:{port}",
        protocol=GRPC,
        batch_size=args.batch_size,
    )
    state = forwarder.CollectorState(exporter)
    try:
        forwarder.step(state)  # lease, connection, first batch: not timed
        cursor = ExportCursor.objects.get(collector="bench")
        first = cursor.delivered
        began = time.monotonic()
        last_id = Span.objects.order_by("-id").values_list("id", flat=True).first()
        while ExportCursor.objects.get(collector="bench").last_span_id != last_id:
            forwarder.step(state)
        elapsed = time.monotonic() - began
    finally:
        transport.close()
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=30)
    cursor = ExportCursor.objects.get(collector="bench")
    received, unique = (int(x) for x in counts.read_text().split())
    rate = (cursor.delivered - first) / elapsed
    print(
        f"forwarded {cursor.delivered - first:,} spans in {elapsed:.2f} s "
        f"(batches of {args.batch_size}) to OTLP/gRPC"
    )
    print(f"sustained: {rate:,.0f} spans/s (target {TARGET_SPANS_PER_SECOND:,})")
    print(f"receiver: {received:,} spans, {unique:,} distinct; store: {total:,}")
    if unique != total or cursor.delivered != total or cursor.rejected:
        print("MISMATCH: the receiver did not get every stored span")
        return 1
    return 0 if rate >= TARGET_SPANS_PER_SECOND else 2


if __name__ == "__main__":
    sys.exit(main())

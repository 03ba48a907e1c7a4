"""``bench/worker_overhead.py --probe DIR``: what a benchmark worker spends, measured inside it.

Loaded by Python at start-up (``sitecustomize``) in each worker the benchmark starts
with ``--probe``, because the benchmark puts this directory on ``PYTHONPATH``; it
does nothing unless ``BENCH_PROBE_OUT`` names the file to write. It records, from
the end of the warm-up (``SIGUSR2``) and written once a second:

- garbage collections per generation and the CPU time they took (``gc.callbacks``);
- CPU per thread name (``/proc/self/task``);
- sandbox creations (``SandboxedWorkflowRunner.create_instance``) and their CPU time;
- with tracing on, the CPU time (``time.thread_time``, ~0.6 µs a call) of every
  tracing entry point: the bridge's span and trace ends, Temporal's span start and
  end in the lean interceptor, the worker's span processor, context headers written
  and read, the export thread's batches. Each is timed at its outermost call only.

The timing adds ~2 µs to each timed call, so the tracing figures are a little high;
compare workers probed alike (``--compare base,on`` with both probed).

Set in the benchmark's environment (the workers inherit it), for a closer look:

- ``BENCH_PROBE_DETAIL=1``: also the bridge's parts (names and attributes, run
  context, ids, redaction and encoding, ...) and its conversion time by span type;
  each part adds its own ~2 µs;
- ``BENCH_PROBE_PROFILE=FILE``: a cProfile of the bridge's span ends, in FILE;
- ``BENCH_PROBE_CALLERS=name,...``: who calls the Python functions of those names
  (three frames up), counted; with ``--count-calls`` it says where added calls
  come from. Slow: for call counts, not CPU.
"""

from __future__ import annotations

import os
import sys

OUT = os.environ.get("BENCH_PROBE_OUT")
if OUT and "worker" in sys.orig_argv and "-m" in sys.orig_argv:
    import gc
    import json
    import signal
    import threading
    import time
    from typing import Any

    _thread_time = time.thread_time
    _out: str = OUT
    stats: dict[str, Any] = {}

    def reset(*_: Any) -> None:
        stats.clear()
        stats.update(
            gc_collections=[0, 0, 0],
            gc_seconds=[0.0, 0.0, 0.0],
            sandboxes=[0, 0.0],
            hooks={},
            cpu_start=time.process_time(),
            threads_start=_threads(),
        )

    def _threads() -> dict[str, float]:
        found: dict[str, float] = {}
        ticks = os.sysconf("SC_CLK_TCK")
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                with open(f"/proc/self/task/{tid}/comm") as comm:
                    name = comm.read().strip()
            except OSError:
                continue
            found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
        return found

    _gc_start = threading.local()

    def _on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _gc_start.at = _thread_time()
            return
        generation = info["generation"]
        took = _thread_time() - getattr(_gc_start, "at", 0.0)
        stats["gc_collections"][generation] += 1
        stats["gc_seconds"][generation] += took
        # A collection that ran inside a timed call: its share of that call's time.
        for label in getattr(_active, "labels", ()):
            entry = stats["hooks"].setdefault(label, [0, 0.0, 0.0])
            entry[2] += took

    def _write() -> None:
        while True:
            time.sleep(1)
            now = _threads()
            data = {
                **{key: value for key, value in stats.items() if not key.endswith("_start")},
                "tracing": os.environ.get("LOOMVIEW_TRACING", "on"),
                "tree": os.getcwd(),
                "cpu": time.process_time() - stats["cpu_start"],
                "threads": {
                    name: seconds - stats["threads_start"].get(name, 0.0)
                    for name, seconds in now.items()
                },
            }
            with open(f"{_out}.tmp", "w") as out:
                json.dump(data, out)
            os.replace(f"{_out}.tmp", _out)

    _active = threading.local()

    def timed(owner: Any, name: str, label: str) -> None:
        """Time ``owner.name`` at its outermost call (not again when it recurses)."""
        function = getattr(owner, name, None)
        if function is None:  # an older tree (--base-tree) without it
            return

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            labels = getattr(_active, "labels", None)
            if labels is None:
                labels = _active.labels = set()
            if label in labels:
                return function(*args, **kwargs)
            labels.add(label)
            started = _thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                entry = stats["hooks"].setdefault(label, [0, 0.0, 0.0])
                entry[0] += 1
                entry[1] += _thread_time() - started
                labels.discard(label)

        setattr(owner, name, wrapper)

    def _sandboxes() -> None:
        from temporalio.worker.workflow_sandbox import _runner

        create = _runner.SandboxedWorkflowRunner.create_instance

        def create_instance(self: Any, det: Any) -> Any:
            started = _thread_time()
            try:
                return create(self, det)
            finally:
                stats["sandboxes"][0] += 1
                stats["sandboxes"][1] += _thread_time() - started

        _runner.SandboxedWorkflowRunner.create_instance = create_instance  # type: ignore[method-assign]

    def _tracing() -> None:
        sys.path.insert(0, os.getcwd())  # the tree the worker runs from (--base-tree)
        from telemetry import agents_bridge, otel, otlp_http, temporal_interceptor

        bridge = agents_bridge.OtelBridgeProcessor
        timed(bridge, "on_span_end", "bridge: span end")
        timed(bridge, "on_trace_end", "bridge: trace end")
        timed(bridge, "_convert_ended", "  bridge: conversions")
        timed(otlp_http.WireBatchSpanProcessor, "_gather", "export thread: conversions")
        if os.environ.get("BENCH_PROBE_DETAIL"):  # where a bridge span's time goes
            from telemetry import wire

            timed(agents_bridge, "span_name_and_attributes", "  bridge: name, attributes")
            # By span type: the conversion where spans are converted apart from their end.
            method = "_convert" if hasattr(bridge, "_convert") else "on_span_end"
            by_type = getattr(bridge, method)

            def converted(self: Any, span: Any, *rest: Any) -> Any:
                kind = getattr(span.span_data, "type", "?")
                name = getattr(span.span_data, "name", "") or ""
                label = f"  bridge span: {kind} {name if kind == 'custom' else ''}".rstrip()
                started = _thread_time()
                try:
                    return by_type(self, span, *rest)
                finally:
                    entry = stats["hooks"].setdefault(label, [0, 0.0, 0.0])
                    entry[0] += 1
                    entry[1] += _thread_time() - started

            setattr(bridge, method, converted)
            timed(agents_bridge, "run_context", "  bridge: run context")
            timed(agents_bridge, "current_span_context", "  bridge: current span")
            timed(agents_bridge, "span_id_for", "  bridge: span ids")
            timed(wire, "redacted_attributes", "  bridge: redact, encode attributes")
            timed(wire, "span_bytes", "  bridge: span bytes")
            timed(otlp_http.WireBatchSpanProcessor, "enqueue", "  bridge: enqueue")
            from telemetry import redact

            timed(agents_bridge, "_messages", "    model call: _messages")
            timed(agents_bridge, "_flatten_messages", "    model call: _flatten_messages")
            timed(agents_bridge, "to_json", "    to_json")
            timed(agents_bridge, "data_json", "    data_json")
            timed(redact, "redact_long", "    redact_long")
            timed(agents_bridge, "RunContext", "    RunContext()")
        if os.environ.get("BENCH_PROBE_PROFILE"):  # cProfile of the bridge's span ends
            import cProfile

            profiler = cProfile.Profile()
            lock = threading.Lock()
            profiled = bridge.on_span_end

            def profiled_span_end(self: Any, span: Any) -> Any:
                with lock:
                    profiler.enable()
                    try:
                        return profiled(self, span)
                    finally:
                        profiler.disable()

            def dump() -> None:
                while True:
                    time.sleep(3)
                    with lock:
                        profiler.dump_stats(os.environ["BENCH_PROBE_PROFILE"])

            bridge.on_span_end = profiled_span_end  # type: ignore[method-assign]
            threading.Thread(target=dump, daemon=True).start()
        timed(temporal_interceptor, "_start", "Temporal: span start")
        timed(temporal_interceptor, "_end", "Temporal: span end (with processor)")
        timed(otel.WorkerSpanProcessor, "on_end", "  worker span processor")
        timed(temporal_interceptor, "context_to_headers", "context header: write")
        timed(temporal_interceptor, "context_from_headers", "context header: read")
        timed(otlp_http.WireBatchSpanProcessor, "_export", "export thread: batches")

    def _callers(names: set[str]) -> None:
        """Count who calls the Python functions named ``names`` (and through what)."""
        import collections

        counts: collections.Counter[str] = collections.Counter()
        stats["callers"] = counts

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event != "call" or frame.f_code.co_name not in names:
                return
            code, back = frame.f_code, frame.f_back
            chain = []
            for _ in range(3):
                if back is None:
                    break
                where = f"{back.f_code.co_filename[-40:]}:{back.f_lineno}"
                chain.append(f"{where} {back.f_code.co_name}")
                back = back.f_back
            counts[f"{code.co_name} <- " + " <- ".join(chain)] += 1

        sys.setprofile(profile)
        threading.setprofile(profile)

    reset()
    if os.environ.get("BENCH_PROBE_CALLERS"):
        _callers(set(os.environ["BENCH_PROBE_CALLERS"].split(",")))
        _reset = reset

        def reset(*_: Any) -> None:
            counts = stats.get("callers")
            _reset()
            if counts is not None:
                counts.clear()
                stats["callers"] = counts

    gc.callbacks.append(_on_gc)
    signal.signal(signal.SIGUSR2, reset)
    _sandboxes()
    if os.environ.get("LOOMVIEW_TRACING", "on") != "off":
        _tracing()
    threading.Thread(target=_write, name="bench-probe", daemon=True).start()

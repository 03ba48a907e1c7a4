"""Ingest cost per span, per stage: figures this shared machine cannot spoil.

Wall throughput (bench/ingest.py) moves with the machine's load; the work
done per span moves much less. This harness feeds the same OTLP batches as
bench/ingest.py (512 spans, fresh trace ids per post) through the receiver's
own code in process, on a fresh database, and measures each stage:

- ``decode``: ``tracing.otlp.decode`` (protobuf parse, validation, redaction,
  correlation keys);
- the functions ``tracing.store.ingest`` calls (insert, summaries, rollups,
  trace health, lineage, trace links, ...), each exclusive of the others;
  ``store (rest)`` is the transaction, its commit and the glue;
- ``publish``: the receiver's channel-layer notifications (in-memory layer);
- ``response``: encoding the OTLP answer;
- with ``--asgi``, ``request (rest)``: the whole Django ASGI app around them
  (middleware, the view, its thread hand-offs), daphne's HTTP parsing aside.

Two measures:

- CPU time (``time.process_time``), default: each of ``--rounds`` rounds
  posts ``--batches`` batches; the report gives each stage's best round, so
  a round slowed by another process's cache traffic does not count;
- ``--callgrind``: instructions executed (valgrind's callgrind), which do
  not depend on the machine's load at all. The total is the whole program's
  count from the start of the measured batches to their end, every thread.
  Each stage is told apart by callgrind's own client request: entering and
  leaving a stage dumps the counts so far (``CALLGRIND_DUMP_STATS_AT``, from a
  tiny shared library built with ``cc``), so each dump holds the instructions
  of one stretch of one stage, exclusive of the stages it calls. Slow (one run
  of 3-7 min on a loaded machine): the default is 4 batches after 2 warm-up
  ones.

    .venv/bin/python bench/ingest_cpu.py [--rounds 5] [--batches 10] [--asgi]
    .venv/bin/python bench/ingest_cpu.py --callgrind [--batches 4]
    .venv/bin/python bench/ingest_cpu.py --root /tmp/old      # another checkout's code
    .venv/bin/python bench/ingest_cpu.py --postgres           # a fresh PostgreSQL server
    .venv/bin/python bench/ingest_cpu.py --profile out.prof   # cProfile of the rounds

``--root`` runs another checkout's receiver (``git worktree add /tmp/old
<commit>``) on the same batches, for a before/after table; stages that tree
does not have show as ``-``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ctypes
import functools
import gc
import importlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ingest import SPANS_PER_BATCH, build_batch  # noqa: E402

# (label, module, function): store.ingest's callees, timed exclusive of each other.
STAGES = [
    ("ancestors", "tracing.store", "_inherit_from_ancestors"),
    ("run ids", "tracing.store", "_resolve_run_ids"),
    ("stage (COPY)", "tracing.store", "_stage"),
    ("insert", "tracing.store", "_insert"),
    ("adopt orphans", "tracing.store", "_adopt_orphans"),
    ("adopt run-less", "tracing.store", "_adopt_runless"),
    ("trace health", "tracing.health", "track"),
    ("lineage", "tracing.lineage", "record_from_spans"),
    ("summaries", "tracing.store", "_update_summaries"),
    ("rollups", "tracing.rollups", "apply"),
    ("trace links", "tracing.store", "_link_by_history"),
    ("search index", "tracing.search", "index_spans"),
]
STORE = "store (rest)"
REQUEST = "request (rest)"
ORDER = ["decode", *[s[0] for s in STAGES], STORE, "publish", "response", REQUEST]
GC = "(gc, in the above)"
# Keys of the PostgreSQL server's CPU per stage, and of its other processes.
SERVER = "server: "
SERVER_OTHER = "(server, other processes)"
WHOLE = "(whole program)"
WARM_UP = 2

# Callgrind's client request, callable through ctypes: dump the counts since the
# last dump under a label (the stage that ran meanwhile).
_STAGES_C = (
    "#include <valgrind/callgrind.h>\n"
    "void lv_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }\n"
)
OUTSIDE = "(outside the stages)"
WARM_UP_LABEL = "(warm-up)"


class Stages:
    """Runs every stage through a measure: CPU time, or a C function for callgrind."""

    def __init__(self, library: ctypes.CDLL | None = None) -> None:
        self.spent: dict[str, float] = {}
        # PostgreSQL: the CPU the connection's server process spent in each stage.
        self.server_spent: dict[str, float] = {}
        self.server: Callable[[], float] | None = None
        # [label, started, child time, server started, server child time]
        self.stack: list[list[Any]] = []
        self.library = library
        self.measuring = False
        self.labels: list[str] = []  # callgrind: the stages running, innermost last

    def wrap(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        if self.library is not None:
            return self._wrap_c(label, function)

        def timed(*args: Any, **kwargs: Any) -> Any:
            server = self.server() if self.server else 0.0
            self.stack.append([label, time.process_time(), 0.0, server, 0.0])
            try:
                return function(*args, **kwargs)
            finally:
                ended = time.process_time()
                server = self.server() if self.server else 0.0
                name, started, children, server_started, server_children = self.stack.pop()
                total = ended - started
                self.spent[name] = self.spent.get(name, 0.0) + total - children
                server_total = server - server_started
                self.server_spent[name] = (
                    self.server_spent.get(name, 0.0) + server_total - server_children
                )
                if self.stack:
                    self.stack[-1][2] += total
                    self.stack[-1][4] += server_total

        return timed

    def _wrap_c(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def dumped(*args: Any, **kwargs: Any) -> Any:
            if not self.measuring:
                return function(*args, **kwargs)
            self.dump()  # the stretch of the stage that called this one
            self.labels.append(label)
            try:
                return function(*args, **kwargs)
            finally:
                self.dump()
                self.labels.pop()

        return dumped

    def dump(self, label: str | None = None) -> None:
        """Callgrind: the counts since the last dump belong to label (default: the
        innermost stage running)."""
        assert self.library is not None
        name = label or (self.labels[-1] if self.labels else OUTSIDE)
        self.library.lv_dump(name.encode())


def build_stage_library(directory: Path) -> Path:
    source = directory / "lv_stages.c"
    library = directory / "lv_stages.so"
    source.write_text(_STAGES_C + "\n")
    subprocess.run(["cc", "-O0", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


def setup(root: Path, data_dir: str, database_url: str, migrate: bool = True) -> None:
    os.environ.update(
        {
            "LOOMVIEW_DATA_DIR": data_dir,
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "LOOMVIEW_LOG_LEVEL": "WARNING",
        }
    )
    for name in ("LOOMVIEW_OTLP_TOKEN", "LOOMVIEW_REDIS_URL", "LOOMVIEW_REDACT_PATTERNS"):
        os.environ.pop(name, None)
    os.chdir(root)
    sys.path.insert(0, str(root))
    import django
    from django.core.management import call_command

    django.setup()
    if migrate:
        call_command("migrate", verbosity=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=HERE.parent, help="checkout to measure")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, help="batches per round (default 10; callgrind 4)")
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the rounds here")
    parser.add_argument(
        "--asgi",
        action="store_true",
        help="post through the whole ASGI app (middleware, view, its threads)",
    )
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.root = args.root.resolve()
    if args.batches is None:
        args.batches = 4 if args.callgrind or args.child else 10
    if args.child:
        return child(args)

    nonce = os.urandom(8)
    bodies = [build_batch(seed, nonce) for seed in range(8)]
    with tempfile.TemporaryDirectory(prefix="loomview-cpu-") as tmp:
        if args.callgrind:
            instructions = run_callgrind(args, Path(tmp), bodies, nonce)
            report_callgrind(args, instructions)
            return 0
        postgres = None
        if args.postgres:
            postgres = _start_postgres()
            database_url = postgres.url
            args.server_pid = postgres.process.pid
        else:
            database_url = f"sqlite:///{tmp}/cpu.sqlite3"
        try:
            setup(args.root, tmp, database_url)
            rounds = measure(args, bodies, nonce)
        finally:
            if postgres is not None:
                from django.db import connections

                connections.close_all()
                postgres.stop()
    report(args, rounds)
    return 0


def _schedstat_seconds(pid: int) -> float:
    """CPU time a process (all its threads: a PostgreSQL backend has one) has run,
    in seconds with ns resolution (/proc/PID/schedstat; /proc/PID/stat counts ticks)."""
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0]) / 1e9


def _server_tree_seconds(pid: int) -> float:
    """CPU of the PostgreSQL server: the postmaster and every process it started
    (backends, WAL writer, checkpointer, ...), live ones only."""
    total = _schedstat_seconds(pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            if int(stat[1]) == pid:
                total += _schedstat_seconds(int(entry))
        except OSError:
            continue  # gone meanwhile
    return total


def _start_postgres() -> Any:
    sys.path.insert(0, str(HERE.parent))
    from tests import servers

    # PostgreSQL's defaults (fsync, synchronous commit), as bench/ingest.py.
    server = servers.start_postgres(durable=True)
    # The measured tree's own modules, not this checkout's.
    sys.path.remove(str(HERE.parent))
    for name in [n for n in sys.modules if n == "tests" or n.startswith("tests.")]:
        del sys.modules[name]
    return server


def instrument(stages: Stages, args: argparse.Namespace) -> tuple[Callable[[bytes], int], set[str]]:
    """Wrap the stages in place; returns post(body) -> spans stored, and the stages present."""
    from tracing import otlp, store, views

    present = {"decode", STORE, "publish", "response"}
    for label, module_name, function_name in STAGES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        function = getattr(module, function_name, None)
        if function is not None:
            setattr(module, function_name, stages.wrap(label, function))
            present.add(label)
    otlp.decode = stages.wrap("decode", otlp.decode)
    otlp.encode_response = stages.wrap("response", otlp.encode_response)
    store.ingest = ingest = stages.wrap(STORE, store.ingest)
    loop = asyncio.new_event_loop()
    publish = views._publish
    publish_sync = stages.wrap("publish", lambda result: loop.run_until_complete(publish(result)))

    async def measured_publish(result: Any) -> None:
        # In the view it runs on daphne's loop: on a thread of its own here.
        await asyncio.get_running_loop().run_in_executor(None, publish_sync, result)

    if args.asgi:
        from dashboard.asgi import application

        present.add(REQUEST)
        views._publish = measured_publish
        request_loop = asyncio.new_event_loop()
        whole = stages.wrap(
            REQUEST, lambda body: request_loop.run_until_complete(asgi_post(application, body))
        )

        def post(body: bytes) -> int:
            status = whole(body)
            assert status == 200, status
            return SPANS_PER_BATCH

        return post, present

    def post_direct(body: bytes) -> int:
        decoded = otlp.decode(body, otlp.PROTOBUF)
        result = ingest(decoded.rows)
        publish_sync(result)
        otlp.encode_response(decoded.rejected, decoded.error_message(), otlp.PROTOBUF)
        assert result.stored == SPANS_PER_BATCH, result
        return int(result.stored)

    return post_direct, present


def measure(args: argparse.Namespace, bodies: list[bytes], nonce: bytes) -> list[dict[str, float]]:
    stages = Stages()
    post, present = instrument(stages, args)
    # The garbage collector's share, whichever stage it interrupted.
    gc_clock = [0.0, 0.0]  # started, spent

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_clock[0] = time.process_time()
        else:
            gc_clock[1] += time.process_time() - gc_clock[0]

    gc.callbacks.append(on_gc)
    posted = 0

    def next_body() -> bytes:
        nonlocal posted
        posted += 1
        return bodies[posted % len(bodies)].replace(nonce, os.urandom(8))

    for _ in range(WARM_UP):  # imports, caches, statements
        post(next_body())
    # CPU time, as the stages: waits for the server are not the receiver's cost.
    profiler = cProfile.Profile(time.process_time) if args.profile else None
    rounds: list[dict[str, float]] = []
    server_pid = getattr(args, "server_pid", None)
    for _ in range(args.rounds):
        stages.spent = {}
        stages.server_spent = {}
        gc_clock[1] = 0.0
        spans = 0
        tree_before = backend_before = 0.0
        if server_pid is not None:
            from django.db import connection

            connection.ensure_connection()
            backend = connection.connection.info.backend_pid
            stages.server = functools.partial(_schedstat_seconds, backend)
            tree_before = _server_tree_seconds(server_pid)
            backend_before = stages.server()
        for _ in range(args.batches):
            body = next_body()
            if profiler:
                profiler.enable()
            spans += post(body)
            if profiler:
                profiler.disable()
        per_span = {k: v / spans * 1e6 for k, v in stages.spent.items()}
        for label in present:
            per_span.setdefault(label, 0.0)
        per_span[GC] = gc_clock[1] / spans * 1e6
        if stages.server is not None and server_pid is not None:
            backend_total = stages.server() - backend_before
            tree_total = _server_tree_seconds(server_pid) - tree_before
            for k, v in stages.server_spent.items():
                per_span[SERVER + k] = v / spans * 1e6
            # The backend's CPU between the stages (commits outside them, idle reads).
            inside = sum(stages.server_spent.values())
            per_span[SERVER + STORE] += (backend_total - inside) / spans * 1e6
            per_span[SERVER_OTHER] = (tree_total - backend_total) / spans * 1e6
        rounds.append(per_span)
    if profiler and args.profile:
        profiler.dump_stats(args.profile)
    return rounds


async def asgi_post(application: Any, body: bytes) -> int:
    """POST /v1/traces through the ASGI app as daphne would; returns the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/traces",
        "raw_path": b"/v1/traces",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/x-protobuf"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []
    # Daphne hands the app the body in pieces of its request_buffer_size:
    # 8 kB, or the whole body where dashboard.http_guard raises it.
    from dashboard import http_guard

    whole = getattr(http_guard, "BODY_IN_ONE_MESSAGE", False)
    chunk = int(os.environ.get("LV_CHUNK", str(len(body) if whole else 8192))) or 1
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive() -> dict[str, Any]:
        if not pieces:
            await asyncio.Event().wait()  # a client that stays connected
        piece = pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await application(scope, receive, send)
    return int(sent[0]["status"])


def report(args: argparse.Namespace, rounds: list[dict[str, float]]) -> None:
    def client(r: dict[str, float]) -> float:
        return sum(v for k, v in r.items() if k in ORDER)

    def server(r: dict[str, float]) -> float:
        return sum(v for k, v in r.items() if k.startswith(SERVER) or k == SERVER_OTHER)

    totals = [client(r) + server(r) for r in rounds]
    best = rounds[totals.index(min(totals))]
    postgres = any(server(r) for r in rounds)
    print(
        f"{args.root}: {args.rounds} rounds of {args.batches} x {SPANS_PER_BATCH} spans, "
        f"{'PostgreSQL' if args.postgres else 'SQLite'}"
        f"{', whole ASGI app' if args.asgi else ''}, load {os.getloadavg()[0]:.1f}"
    )
    extra = f" {'server':>8} {'both':>8}" if postgres else ""
    print(f"{'µs CPU/span':<18} {'best round':>10} {'min':>8}{extra}")
    for label in [*ORDER, GC]:
        if label not in best:
            print(f"{label:<18} {'-':>10} {'-':>8}")
            continue
        low = min(r.get(label, 0.0) for r in rounds)
        line = f"{label:<18} {best[label]:>10.1f} {low:>8.1f}"
        if postgres and label != GC:
            on_server = best.get(SERVER + label, 0.0)
            line += f" {on_server:>8.1f} {best[label] + on_server:>8.1f}"
        print(line)
    rounds_text = ", ".join(f"{client(r):.0f}" for r in rounds)
    print(f"{'total':<18} {client(best):>10.1f}           (rounds: {rounds_text})")
    if postgres:
        print(f"{SERVER_OTHER:<18} {'':>10} {'':>8} {best[SERVER_OTHER]:>8.1f}")
        rounds_text = ", ".join(f"{server(r):.0f}" for r in rounds)
        print(f"{'server total':<18} {server(best):>10.1f}           (rounds: {rounds_text})")
        print(
            f"= {client(best) / 100:.2f} + {server(best) / 100:.2f} (server) = "
            f"{(client(best) + server(best)) / 100:.2f} CPU s per 10k spans"
        )
        return
    print(
        f"= {min(totals) / 100:.2f} CPU s per 10k spans; "
        f"CPU-bound ceiling: {1e6 / min(totals):,.0f} spans/s on one core"
    )


# -- callgrind -------------------------------------------------------------------


def run_callgrind(
    args: argparse.Namespace, tmp: Path, bodies: list[bytes], nonce: bytes
) -> dict[str, float]:
    """Run a child under callgrind; returns instructions per span per stage (exclusive)."""
    if args.postgres:
        raise SystemExit("--callgrind measures the SQLite path only")
    # The batches (with their trace ids made fresh) and a migrated database,
    # made natively: under callgrind they would take minutes.
    posts = [
        bodies[i % len(bodies)].replace(nonce, os.urandom(8)) for i in range(WARM_UP + args.batches)
    ]
    (tmp / "bodies.pickle").write_bytes(pickle.dumps(posts))
    env = {
        **os.environ,
        "LOOMVIEW_DATA_DIR": str(tmp),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    }
    env["DATABASE_URL"] = f"sqlite:///{tmp}/cpu.sqlite3"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=args.root, env=env,
        check=True,
    )  # fmt: skip
    library = build_stage_library(tmp)
    env["LOOMVIEW_STAGE_LIBRARY"] = str(library)
    spans = args.batches * SPANS_PER_BATCH
    counts = _callgrind_child(args, tmp, env, args.batches)
    per_span = {label: count / spans for label, count in counts.items()}
    per_span[WHOLE] = sum(counts.values()) / spans
    return per_span


def _callgrind_child(
    args: argparse.Namespace, tmp: Path, env: dict[str, str], batches: int
) -> dict[str, int]:
    """Instructions per label (stage, or outside the stages) of the measured batches."""
    shutil.copy(tmp / "cpu.sqlite3", tmp / "run.sqlite3")
    dumps = tmp / "dumps"
    dumps.mkdir(exist_ok=True)
    out = dumps / "callgrind.out"
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, str(Path(__file__).resolve()), "--child", str(tmp),
        "--root", str(args.root), "--batches", str(batches),
        *(["--asgi"] if args.asgi else []),
    ]  # fmt: skip
    started = time.monotonic()
    subprocess.run(command, check=True, env=env, stderr=subprocess.DEVNULL)
    print(f"callgrind run ({batches} batches): {time.monotonic() - started:.0f} s")
    counts: dict[str, int] = {}
    for path in dumps.iterdir():
        label, total = "", 0
        with path.open(errors="replace") as lines:
            for line in lines:
                if line.startswith("desc: Trigger: Client Request: "):
                    label = line.split(": ", 3)[3].strip()
                elif line.startswith("summary: "):
                    total = int(line.split()[1])
                    break
        # The warm-up (up to the first measured stage) and the program's
        # termination (its own dump, "Program termination") are not counted.
        if label and label != WARM_UP_LABEL:
            counts[label] = counts.get(label, 0) + total
        path.unlink()
    return counts


def child(args: argparse.Namespace) -> int:
    """Under callgrind: post the prepared batches, each stage between two dumps."""
    tmp = args.child
    library = ctypes.CDLL(os.environ["LOOMVIEW_STAGE_LIBRARY"])
    posts: list[bytes] = pickle.loads((tmp / "bodies.pickle").read_bytes())
    setup(args.root, str(tmp), f"sqlite:///{tmp}/run.sqlite3", migrate=False)
    stages = Stages(library)
    post, _ = instrument(stages, args)
    for body in posts[:WARM_UP]:
        post(body)
    stages.dump(WARM_UP_LABEL)
    stages.measuring = True
    for body in posts[WARM_UP : WARM_UP + args.batches]:
        post(body)
    stages.dump()  # what ran after the last stage, outside every stage
    return 0


def report_callgrind(args: argparse.Namespace, exclusive: dict[str, float]) -> None:
    total = exclusive.pop(WHOLE)
    print(
        f"{args.root}: callgrind, {args.batches} x {SPANS_PER_BATCH} spans after {WARM_UP} "
        f"warm-up batches, SQLite{', whole ASGI app' if args.asgi else ''}"
    )
    print(f"{'instructions/span':<20} {'':>10}")
    for label in [*ORDER, OUTSIDE]:
        value = exclusive.get(label)
        print(f"{label:<20} {'-' if value is None else f'{value:,.0f}':>10}")
    print(
        f"{'total':<20} {total:>10,.0f}   (every thread, from the first measured batch to the end)"
    )
    print(f"= {total * 10_000 / 1e9:.1f} G instructions per 10k spans")


if __name__ == "__main__":
    sys.exit(main())

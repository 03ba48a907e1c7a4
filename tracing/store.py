"""Writing decoded span rows to the store and reading a run's spans back.

Ingest is the hot path (see bench/ingest.py): a batch costs a fixed handful of
queries whatever its size: one multi-row INSERT per chunk that skips spans
already stored, one lookup of stored ancestors, one of stored orphans, and
one read plus one write of the affected run summaries. Everything happens in
one transaction, so a batch is stored whole or not at all.

Temporal ids reach spans that do not carry them (OpenInference, GenAI
instrumentations) from their nearest ancestor that does: at ingest when the
ancestor is in the batch or already stored, at ingest of the ancestor for
descendants stored before it (exporters send children first, since they end
first), and at query time by walking the tree. Parent links come from
strangers: every walk up the tree is bounded (MAX_ANCESTOR_DEPTH) and stops at
a cycle (a span that is its own ancestor).

Rows reach here validated by tracing.otlp. Should the database still refuse
one (a constraint, a value too big for a column), the batch is stored again
span by span, so only that span is lost (``IngestResult.rejected``); a failure
that is not a span's fault (the database locked, the disk full) propagates,
and the receiver answers 503.
"""

from __future__ import annotations

import functools
import operator
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import Count, Max, Min
from django.utils import timezone

from telemetry import vocab
from telemetry.vocab import MODEL_KINDS, STATUS_ERROR
from tracing import health, lineage, pg, rollups
from tracing import links as history_links
from tracing.models import RunSummary, Span, TraceLink

RunKey = tuple[str, str]
SpanKey = tuple[str, str]

# One INSERT carries this many rows; stays under SQLite's 32,766 parameters.
INSERT_CHUNK = 500
# How far up the tree ingest looks for stored ancestors; deeper orphans are
# still resolved at query time.
MAX_ANCESTOR_ROUNDS = 8
# How many parents any walk up the tree follows, at most.
MAX_ANCESTOR_DEPTH = 256
# A run summary lists at most this many agents: a sender inventing a new
# agent name per span must not make the runs list row huge.
MAX_SUMMARY_AGENTS = 50

_COLUMNS = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "span_kind",
    "workflow_id",
    "run_id",
    "activity_id",
    "attempt",
    "inherited",
    "model",
    "agent",
    "tool",
    "tokens_in",
    "tokens_out",
    "status_code",
    "status_message",
    "start_ns",
    "end_ns",
    "duration_ns",
    "service_name",
]
_DATA_KEYS = ("attributes", "events", "links", "resource", "scope")
# A row's column values and data values, in order (hot path: C, not a comprehension).
_COLUMN_VALUES = operator.itemgetter(*_COLUMNS)
_DATA_VALUES = operator.itemgetter(*_DATA_KEYS)
# Kept only when the sender set them: the instrumentation scope's version and attributes.
_OPTIONAL_DATA_KEYS = ("scope_version", "scope_attributes")
_IDS = ("workflow_id", "run_id", "activity_id", "attempt")
# What re-counting an already stored span in its run summary needs.
_SUMMARY_INPUT = (
    "id", "trace_id", "span_id", "parent_span_id", "name", "kind", "agent", "model", "tokens_in",
    "tokens_out", "status_code", "status_message", "start_ns", "end_ns", *_IDS,
)  # fmt: skip

_SPAN_TABLE = Span._meta.db_table
_SEQUENCE_SQL = f"SELECT seq FROM sqlite_sequence WHERE name = '{_SPAN_TABLE}'"

# SQLite has one writer at a time anyway; queueing writers here instead of in
# SQLite's busy handler avoids its back-off sleeps under concurrent exports.
_sqlite_writer = threading.Lock()


@dataclass
class IngestResult:
    stored: int = 0
    duplicates: int = 0
    runs: dict[RunKey, dict[str, Any]] = field(default_factory=dict)
    new_spans: dict[RunKey, int] = field(default_factory=dict)
    # Spans the database refused, each "span <id>: <reason>".
    rejected: list[str] = field(default_factory=list)

    def merge(self, other: IngestResult) -> None:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.runs.update(other.runs)
        for key, count in other.new_spans.items():
            self.new_spans[key] = self.new_spans.get(key, 0) + count
        self.rejected += other.rejected


# What a span's values can make the database refuse: the span's fault, not
# the database's. OverflowError is sqlite3's answer to an int beyond int64.
_SPAN_FAULTS = (IntegrityError, DataError, OverflowError)


# PostgreSQL advisory lock key for span writers (any constant; "loomspan").
_SPAN_WRITER_LOCK = 0x6C6F6F6D7370616E


@contextmanager
def _writer(before_lock: Callable[[], None] | None = None) -> Iterator[None]:
    """One span writer at a time, in a transaction. PostgreSQL: before_lock runs in
    the transaction before the writers' lock is taken (work that other writers
    need not wait for)."""
    lock = _sqlite_writer if connection.vendor == "sqlite" else nullcontext()
    with lock, transaction.atomic():
        if connection.vendor == "postgresql":
            if before_lock is not None:
                before_lock()
            # The forwarder (tracing.forwarder) reads spans by id above a
            # cursor, so ids must become visible in order: one span writer at
            # a time, as SQLite has anyway.
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SPAN_WRITER_LOCK])
        yield


def ingest(rows: list[dict[str, Any]]) -> IngestResult:
    """Store decoded rows (from tracing.otlp) and bring run summaries up to date.

    All or nothing per span: if the database refuses the batch because of a
    span's values, each span is stored on its own and the refused ones are
    reported in ``rejected``.
    """
    try:
        return _ingest(rows)
    except _SPAN_FAULTS as exc:
        if len(rows) <= 1:
            return IngestResult(rejected=[_refusal(row, exc) for row in rows])
    result = IngestResult()
    for row in rows:
        try:
            result.merge(_ingest([row]))
        except _SPAN_FAULTS as exc:
            result.rejected.append(_refusal(row, exc))
    return result


def _refusal(row: dict[str, Any], exc: BaseException) -> str:
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return f"span {row.get('span_id', '?')}: the store cannot hold it ({reason})"


def _ingest(rows: list[dict[str, Any]]) -> IngestResult:
    result = IngestResult()
    unique: dict[SpanKey, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault((row["trace_id"], row["span_id"]), row)
    if not unique:
        return result
    batch = list(unique.values())
    staged: list[Staged] = []
    with _writer(before_lock=lambda: staged.append(_stage(batch))):
        _inherit_from_ancestors(batch)
        _resolve_run_ids(batch)
        inserted = _insert(batch, staged[0] if staged else None)
        adopted = _adopt_orphans(inserted) + _adopt_runless(inserted)
        result.stored = len(inserted)
        result.duplicates = len(rows) - len(inserted)
        counted = inserted + adopted
        for row in counted:
            if row["workflow_id"] and row["run_id"]:
                key = (row["workflow_id"], row["run_id"])
                result.new_spans[key] = result.new_spans.get(key, 0) + 1
        deltas = health.track(rows, batch, inserted, adopted)
        lineage.record_from_spans(inserted)
        result.runs = _update_summaries(counted, deltas, _arrivals(inserted))
        rollups.apply(counted)
        _link_by_history(inserted, result)
    return result


Node = dict[str, Any]


def nearest_carriers(
    keys: Iterable[SpanKey], nodes: dict[SpanKey, Node]
) -> dict[SpanKey, Node | None]:
    """For each key, its closest ancestor in nodes that carries a workflow id.

    One walk per chain, not per span: every span a walk passes shares its
    answer (they carry no ids, or the walk would have stopped at them). A walk
    stops at a cycle and after MAX_ANCESTOR_DEPTH parents.
    """
    found: dict[SpanKey, Node | None] = {}
    for start in keys:
        if start in found:
            continue
        path: list[SpanKey] = []
        on_path: set[SpanKey] = set()
        key = start
        carrier: Node | None = None
        while True:
            if key in found:
                carrier = found[key]
                break
            if key in on_path or len(path) >= MAX_ANCESTOR_DEPTH:
                break
            path.append(key)
            on_path.add(key)
            node = nodes.get(key)
            parent = node["parent_span_id"] if node is not None else ""
            if not parent:
                break
            key = (key[0], parent)
            ancestor = nodes.get(key)
            if ancestor is None:
                break
            if ancestor["workflow_id"]:
                carrier = ancestor
                break
        for passed in path:
            found[passed] = carrier
    return found


def _take_ids(row: dict[str, Any], source: dict[str, Any]) -> None:
    row["workflow_id"] = source["workflow_id"]
    row["run_id"] = source["run_id"]
    if not row["activity_id"] and _within_attempt(row, source):
        row["activity_id"] = source["activity_id"]
        if row["attempt"] is None:
            row["attempt"] = source["attempt"]
    row["inherited"] = True


def _within_attempt(row: dict[str, Any], source: dict[str, Any]) -> bool:
    """A model span belongs to its ancestor's activity attempt only if it ran within it.

    Instrumentations that keep their own span parents (OpenInference with an
    evicted workflow cache) may parent a model call under another call's
    activity; such a span keeps the run and is matched by time instead
    (tracing.correlation)."""
    if row.get("kind") not in MODEL_KINDS or not source.get("activity_id"):
        return True
    start, end = source.get("start_ns"), source.get("end_ns")
    if start is None or end is None:
        return True
    return bool(start <= row["start_ns"] and row["end_ns"] <= end)


def _inherit_from_ancestors(batch: list[dict[str, Any]]) -> None:
    orphans = [r for r in batch if not r["workflow_id"] and r["parent_span_id"]]
    if not orphans:
        return
    nodes: dict[SpanKey, dict[str, Any]] = {(r["trace_id"], r["span_id"]): r for r in batch}
    for _ in range(MAX_ANCESTOR_ROUNDS):
        missing: set[SpanKey] = set()
        # Where each chain's walk already went: a chain shared by many orphans
        # (or a cycle) is followed once.
        walked: set[SpanKey] = set()
        for row in orphans:
            node: dict[str, Any] | None = row
            for _ in range(MAX_ANCESTOR_DEPTH):
                if node is None or node["workflow_id"] or not node["parent_span_id"]:
                    break
                parent_key = (node["trace_id"], node["parent_span_id"])
                if parent_key in walked:
                    break
                walked.add(parent_key)
                if parent_key not in nodes:
                    missing.add(parent_key)
                    break
                node = nodes[parent_key]
        if not missing:
            break
        found = _fetch_nodes(missing)
        for key in missing:
            # Remember misses too, so the next round does not ask again.
            nodes[key] = found.get(key) or {
                "trace_id": key[0],
                "span_id": key[1],
                "parent_span_id": "",
                "workflow_id": "",
            }
    carriers = nearest_carriers([(r["trace_id"], r["span_id"]) for r in orphans], nodes)
    for row in orphans:
        source = carriers[(row["trace_id"], row["span_id"])]
        if source is not None:
            _take_ids(row, source)


def _resolve_run_ids(batch: list[dict[str, Any]]) -> None:
    """Spans that know their workflow but not its run (a client's ``StartWorkflow``
    and what hangs below it) take the run id of the same workflow in the same trace."""
    runless = [r for r in batch if r["workflow_id"] and not r["run_id"]]
    if not runless:
        return
    known = {
        (r["trace_id"], r["workflow_id"]): r["run_id"]
        for r in batch
        if r["workflow_id"] and r["run_id"]
    }
    missing = {(r["trace_id"], r["workflow_id"]) for r in runless} - known.keys()
    if missing:
        stored = (
            Span.objects.filter(
                trace_id__in={t for t, _ in missing}, workflow_id__in={w for _, w in missing}
            )
            .exclude(run_id="")
            .values_list("trace_id", "workflow_id", "run_id")
            .distinct()
        )
        for trace_id, workflow_id, run_id in stored:
            known.setdefault((trace_id, workflow_id), run_id)
    for row in runless:
        row["run_id"] = known.get((row["trace_id"], row["workflow_id"]), "")


def _adopt_runless(inserted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give stored run-less spans the run id that a newly stored span of their trace has."""
    carriers = {
        (r["trace_id"], r["workflow_id"]): r["run_id"]
        for r in inserted
        if r["workflow_id"] and r["run_id"]
    }
    if not carriers:
        return []
    runless = [
        row
        for row in _strays("run_id", {t for t, _ in carriers}, {w for _, w in carriers})
        if (row["trace_id"], row["workflow_id"]) in carriers
    ]
    updates: dict[str, list[int]] = {}
    for row in runless:
        row["run_id"] = carriers[(row["trace_id"], row["workflow_id"])]
        row.setdefault("workflow_type", "")
        updates.setdefault(row["run_id"], []).append(row["id"])
    for run_id, ids in updates.items():
        Span.objects.filter(id__in=ids).update(run_id=run_id)
    return runless


def _strays(
    empty: str, traces: set[str], workflow_ids: set[str] | None = None
) -> list[dict[str, Any]]:
    """Stored spans of these traces whose ``empty`` column (workflow_id or run_id)
    is still empty, as dicts of _SUMMARY_INPUT; optionally of these workflows only.

    Through the span_strays partial index, which holds only such spans: with no
    statistics SQLite's planner took the (trace_id, span_id) unique index, or
    the run index, and read every span of the batch's traces (or every span of
    its workflows, however many runs they have) on each batch. PostgreSQL's
    planner picks the partial index by itself.
    """
    assert empty in ("workflow_id", "run_id")
    if not traces:
        return []
    quote = connection.ops.quote_name
    table = quote(Span._meta.db_table)
    hint = " INDEXED BY span_strays" if connection.vendor == "sqlite" else ""
    params: list[Any] = sorted(traces)
    # A literal '': the planner proves the partial index usable from it.
    where = f"{quote(empty)} = '' AND trace_id IN ({', '.join(['%s'] * len(traces))})"
    if workflow_ids is not None:
        params += sorted(workflow_ids)
        where += f" AND workflow_id IN ({', '.join(['%s'] * len(workflow_ids))})"
    sql = f"SELECT {', '.join(quote(c) for c in _SUMMARY_INPUT)} FROM {table}{hint} WHERE {where}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [dict(zip(_SUMMARY_INPUT, values, strict=True)) for values in cursor.fetchall()]


def _fetch_nodes(keys: set[SpanKey]) -> dict[SpanKey, dict[str, Any]]:
    traces = {t for t, _ in keys}
    spans = {s for _, s in keys}
    found: dict[SpanKey, dict[str, Any]] = {}
    query = Span.objects.filter(trace_id__in=traces, span_id__in=spans).values(
        "trace_id", "span_id", "parent_span_id", "start_ns", "end_ns", *_IDS
    )
    for node in query:
        key = (node["trace_id"], node["span_id"])
        if key in keys:
            found[key] = node
    return found


def _insert(batch: list[dict[str, Any]], staged: Staged | None = None) -> list[dict[str, Any]]:
    """INSERT the rows, skipping stored ones; returns the rows actually inserted.
    PostgreSQL: from the staging table (_stage), filled now unless it was already."""
    if connection.vendor == "postgresql":
        return _insert_staged(batch, staged if staged is not None else _stage(batch))
    sqlite = connection.vendor == "sqlite"
    # wrap_database_errors: the plain cursor's sqlite3 errors become Django's,
    # so a refused span (IntegrityError) and a locked database
    # (OperationalError) are told apart as on PostgreSQL.
    with connection.cursor() as wrapper, connection.wrap_database_errors:
        # On SQLite, the plain DB-API cursor: Django's wrapper would rewrite
        # every %s of a 12,000-parameter statement into ? on each call.
        cursor = connection.connection.cursor() if sqlite else wrapper
        columns = _COLUMN_VALUES
        inserted: list[dict[str, Any]] = []
        for start in range(0, len(batch), INSERT_CHUNK):
            chunk = batch[start : start + INSERT_CHUNK]
            params: list[Any] = []
            for row in chunk:
                params += columns(row)
                data = _data(row)
                params.append(_compact_json(data) if sqlite else _adapt_json(data))
            if not sqlite:
                cursor.execute(_insert_sql(len(chunk), "%s", returning=True), params)
                inserted_keys = {(t, s) for t, s in cursor.fetchall()}
                inserted += [r for r in chunk if (r["trace_id"], r["span_id"]) in inserted_keys]
                continue
            # No RETURNING on SQLite (it cost ~6 µs a span, bench/README.md): rows
            # skipped as stored already are rare (re-delivery), and the inserted
            # ones are told by their ids. One writer at a time and AUTOINCREMENT:
            # the statement's rows took ids above the mark it started from.
            cursor.execute(_SEQUENCE_SQL)
            mark = cursor.fetchone()
            cursor.execute(_insert_sql(len(chunk), "?", returning=False), params)
            if cursor.rowcount == len(chunk):
                inserted += chunk
            elif cursor.rowcount > 0:
                cursor.execute(
                    f"SELECT trace_id, span_id FROM {_SPAN_TABLE} WHERE id > ?",
                    [mark[0] if mark else 0],
                )
                inserted_keys = {(t, s) for t, s in cursor.fetchall()}
                inserted += [r for r in chunk if (r["trace_id"], r["span_id"]) in inserted_keys]
    return inserted


def _data(row: dict[str, Any]) -> dict[str, Any]:
    """What the span's ``data`` column holds."""
    data = dict(zip(_DATA_KEYS, _DATA_VALUES(row), strict=True))
    for key in _OPTIONAL_DATA_KEYS:
        if row.get(key):
            data[key] = row[key]
    return data


# PostgreSQL: the batch is COPied into a temporary table (one per connection,
# emptied at commit) in the binary format, before the span writers' lock (_writer):
# parsing each span's data into jsonb and compressing it (pglz, over a third of
# the server's CPU on ingest) happen outside the one-writer-at-a-time part. Under
# the lock, the Temporal ids that ancestors gave some rows are written into their
# staged rows, and one INSERT ... SELECT ... ON CONFLICT DO NOTHING moves the rows
# (already compressed) and empties the staging table. bench/ingest.py measured
# COPY against multi-row INSERTs of 500 rows: psycopg spent most of such an
# INSERT splitting and quoting 11,500 placeholders (client-side binding).
_STAGING = "loomview_span_staging"
# What the ancestors (_inherit_from_ancestors, _resolve_run_ids) may change in a row.
_INHERITED = operator.itemgetter(*_IDS, "inherited")
_STAGED_COLUMNS = [*_COLUMNS, "data"]


class Staged(NamedTuple):
    # Each row's _INHERITED values as staged.
    ids: list[tuple[Any, ...]]


def _stage(batch: list[dict[str, Any]]) -> Staged:
    """COPY the rows into the staging table (binary format)."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in _STAGED_COLUMNS)
    connection.ensure_connection()
    raw = connection.connection
    assert raw is not None
    with connection.wrap_database_errors, raw.cursor() as cursor:
        # Every time: a rolled-back transaction takes a table it created with it.
        cursor.execute(_staging_sql(cursor))
        types = _staging_types(cursor)
        with cursor.copy(f"COPY {_STAGING} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            write = copy.write_row
            values = _COLUMN_VALUES
            for row in batch:
                write((*values(row), _compact_json_bytes(_data(row))))
    return Staged(list(map(_INHERITED, batch)))


def _insert_staged(batch: list[dict[str, Any]], staged: Staged) -> list[dict[str, Any]]:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in _STAGED_COLUMNS)
    raw = connection.connection
    assert raw is not None
    changed = [row for row, ids in zip(batch, staged.ids, strict=True) if _INHERITED(row) != ids]
    with connection.wrap_database_errors, raw.cursor() as cursor:
        if changed:
            # Ids given by ancestors under the lock (a few spans of a batch at most).
            names = [*_IDS, "inherited"]
            cursor.execute(
                f"UPDATE {_STAGING} s SET "
                + ", ".join(f"{quote(c)} = u.{quote(c)}" for c in names)
                + " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
                "%s::int[], %s::bool[]) AS u(trace_id, span_id, workflow_id, run_id, activity_id, "
                "attempt, inherited) WHERE s.trace_id = u.trace_id AND s.span_id = u.span_id",
                [
                    [r["trace_id"] for r in changed],
                    [r["span_id"] for r in changed],
                    *([r[c] for r in changed] for c in names),
                ],
            )
        # Moved and emptied in one statement: the same transaction may stage again.
        cursor.execute(
            f"WITH moved AS (DELETE FROM {_STAGING} RETURNING {columns}) "
            f"INSERT INTO {quote(Span._meta.db_table)} ({columns}) "
            f"SELECT {columns} FROM moved "
            "ON CONFLICT (trace_id, span_id) DO NOTHING RETURNING trace_id, span_id"
        )
        inserted_keys = {(t, s) for t, s in cursor.fetchall()}
    if len(inserted_keys) == len(batch):
        return batch
    return [r for r in batch if (r["trace_id"], r["span_id"]) in inserted_keys]


_staging_create: list[str] = []


def _staging_sql(cursor: Any) -> str:
    """The staging table's CREATE. Its data column compresses with lz4 where the
    server has it (PostgreSQL 14+ built with lz4, as Debian's and the PGDG packages
    are): pglz was over a third of the server's CPU on ingest. A value keeps its
    compression when the INSERT ... SELECT moves it, so the spans are stored so too
    (reads decompress either kind); elsewhere PostgreSQL's default, pglz."""
    if not _staging_create:
        quote = connection.ops.quote_name
        cursor.execute(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        )
        found = cursor.fetchone()
        lz4 = " COMPRESSION lz4" if found and found[0] else ""
        fields = {f.column: f for f in Span._meta.concrete_fields}
        definitions = ", ".join(
            f"{quote(c)} {fields[c].db_type(connection)}" + (lz4 if c == "data" else "")
            for c in _STAGED_COLUMNS
        )
        _staging_create.append(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} ({definitions}) ON COMMIT DELETE ROWS"
        )
    return _staging_create[0]


_staging_oids: list[int] = []
# bytea's oid: how psycopg is told to send the data column's bytes as they are.
_BYTEA_OID = 17


def _staging_types(cursor: Any) -> list[int]:
    """The staging table's column types (oids), which binary COPY must be told. The
    data column (jsonb) is declared bytea to psycopg: its value is written already in
    jsonb's binary format (_compact_json_bytes), and psycopg's jsonb dumper would
    encode it again, in Python, row by row."""
    if not _staging_oids:
        cursor.execute(f"SELECT * FROM {_STAGING} LIMIT 0")
        oids = {d.name: d.type_code for d in cursor.description}
        _staging_oids.extend(oids[c] for c in _COLUMNS)
        _staging_oids.append(_BYTEA_OID)
    return _staging_oids


def _compact_json(value: Any) -> str:
    # orjson is ~15x faster than json here, about a tenth of the cost of a span.
    return orjson.dumps(value).decode()


def _compact_json_bytes(value: Any) -> Any:
    """A jsonb value for binary COPY: the format's version byte, then the text."""
    return b"\x01" + orjson.dumps(value)


def _adapt_json(value: Any) -> Any:
    return connection.ops.adapt_json_value(value, None)


@functools.cache
def _insert_sql(rows: int, marker: str, returning: bool) -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in [*_COLUMNS, "data"])
    placeholder = "(" + ", ".join([marker] * (len(_COLUMNS) + 1)) + ")"
    return (
        f"INSERT INTO {quote(Span._meta.db_table)} ({columns}) "
        f"VALUES {', '.join([placeholder] * rows)} "
        "ON CONFLICT (trace_id, span_id) DO NOTHING"
        + (" RETURNING trace_id, span_id" if returning else "")
    )


def _adopt_orphans(inserted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give stored descendants of newly stored spans their Temporal ids."""
    carriers = {(r["trace_id"], r["span_id"]): r for r in inserted if r["workflow_id"]}
    if not carriers:
        return []
    traces = {t for t, _ in carriers}
    orphans = _strays("workflow_id", traces)
    if not orphans:
        return []
    nodes: dict[SpanKey, dict[str, Any]] = dict(carriers)
    for orphan in orphans:
        nodes[(orphan["trace_id"], orphan["span_id"])] = orphan
    adopted: list[dict[str, Any]] = []
    updates: dict[tuple[Any, ...], list[int]] = {}
    found = nearest_carriers([(o["trace_id"], o["span_id"]) for o in orphans], nodes)
    for orphan in orphans:
        source = found[(orphan["trace_id"], orphan["span_id"])]
        if source is None:
            continue
        _take_ids(orphan, source)
        # Only adopt through spans of this batch: an older carrier would have
        # adopted the orphan already, so the summary counted it then.
        adopted.append(orphan)
        updates.setdefault(tuple(orphan[k] for k in _IDS), []).append(orphan["id"])
    for values, ids in updates.items():
        Span.objects.filter(id__in=ids).update(
            inherited=True, **dict(zip(_IDS, values, strict=True))
        )
    for orphan in adopted:
        orphan.setdefault("workflow_type", "")
    return adopted


def _attempt_key(row: dict[str, Any]) -> str | None:
    if row["attempt"] is not None:
        return str(row["attempt"])
    # Temporal's own RunActivity span records no attempt number; each one is
    # an attempt of its own.
    if row["kind"] == "temporal" and row["name"].startswith(vocab.RUN_ACTIVITY_PREFIX):
        return f"span:{row['span_id']}"
    return None


def is_model_span(row: dict[str, Any]) -> bool:
    if not row["activity_id"]:
        return False
    return row["kind"] in MODEL_KINDS or vocab.is_model_activity_span(row["name"])


def _arrivals(inserted: Iterable[dict[str, Any]]) -> dict[RunKey, int]:
    """Spans that arrived now per run (adopted ones arrived earlier)."""
    counts: dict[RunKey, int] = {}
    for row in inserted:
        if row["workflow_id"] and row["run_id"]:
            key = (row["workflow_id"], row["run_id"])
            counts[key] = counts.get(key, 0) + 1
    return counts


def _update_summaries(
    rows: Iterable[dict[str, Any]],
    deltas: dict[RunKey, health.Delta] | None = None,
    arrivals: dict[RunKey, int] | None = None,
) -> dict[RunKey, dict[str, Any]]:
    groups: dict[RunKey, list[dict[str, Any]]] = {}
    for row in rows:
        # A span whose run is not known yet is counted when it gets one.
        if row["workflow_id"] and row["run_id"]:
            groups.setdefault((row["workflow_id"], row["run_id"]), []).append(row)
    deltas = deltas or {}
    if not groups and not deltas:
        return {}
    existing = _load_summaries(groups.keys() | deltas.keys())
    summaries: list[RunSummary] = []
    now_ns = time.time_ns()
    for key in groups.keys() | deltas.keys():
        summary = existing.get(key)
        if summary is None:
            if key not in groups:
                continue  # health news about a run with no spans stored: nothing to flag
            summary = RunSummary(workflow_id=key[0], run_id=key[1], agents=[], model_attempts={})
        apply_rows(summary, groups.get(key, []))
        health.apply(summary, deltas.get(key), (arrivals or {}).get(key, 0), now_ns)
        summaries.append(summary)
    if not summaries:
        return {}
    _upsert_summaries(summaries)
    return {(s.workflow_id, s.run_id): summary_dict(s) for s in summaries}


_SUMMARY_FIELDS = [
    "workflow_type",
    "span_count",
    "model_calls",
    "attempts",
    "failed_attempts",
    "tokens_in",
    "tokens_out",
    "agents",
    "first_span_ns",
    "last_span_ns",
    "last_error",
    "last_error_ns",
    "model_attempts",
    "orphan_spans",
    "cycle_spans",
    "duplicate_spans",
    "late_spans",
    "closed_ns",
    "history_problems",
    "health_problems",
    "history",
]


_SUMMARY_VALUES = operator.attrgetter(*_SUMMARY_FIELDS)

# Plain SQL for the summaries as for the spans: the ORM's query building was a
# tenth of ingest's time for a score of rows per batch.
_SUMMARY_JSON = frozenset({"agents", "model_attempts", "history", "history_health"})


@functools.cache
def _loaded_summary_columns() -> tuple[list[str], list[int]]:
    """The summary columns a batch reads, in the model's field order (what
    Model.from_db takes), and the positions of the JSON ones."""
    wanted = {"id", "workflow_id", "run_id", "history_health", *_SUMMARY_FIELDS}
    columns = [f.attname for f in RunSummary._meta.concrete_fields if f.attname in wanted]
    return columns, [i for i, c in enumerate(columns) if c in _SUMMARY_JSON]


def _load_summaries(keys: Iterable[RunKey]) -> dict[RunKey, RunSummary]:
    wanted = set(keys)
    if not wanted:
        return {}
    workflow_ids = sorted({w for w, _ in wanted})
    run_ids = sorted({r for _, r in wanted})
    # "%s" through Django's cursor on every backend: a "?" breaks its debug
    # cursor (LOOMVIEW_DEBUG, captured queries), which formats the SQL with %.
    # Both ids: a workflow id may have many runs (resets, continue-as-new, a
    # schedule's fixed id), and only these are wanted. (A row-value IN list
    # would scan the table on SQLite; two IN lists use the unique index.)
    quote = connection.ops.quote_name
    columns, json_at = _loaded_summary_columns()
    sql = (
        f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(RunSummary._meta.db_table)} "
        f"WHERE workflow_id IN ({', '.join(['%s'] * len(workflow_ids))}) "
        f"AND run_id IN ({', '.join(['%s'] * len(run_ids))})"
    )
    found: dict[RunKey, RunSummary] = {}
    key_at = columns.index("workflow_id"), columns.index("run_id")
    alias = connection.alias
    with connection.cursor() as cursor:
        cursor.execute(sql, workflow_ids + run_ids)
        for row in cursor.fetchall():
            key = (row[key_at[0]], row[key_at[1]])
            if key not in wanted:
                continue
            values = list(row)
            for at in json_at:
                if isinstance(values[at], str | bytes):
                    values[at] = orjson.loads(values[at])
            # from_db: positional, as Django loads a row (keyword arguments cost
            # a default per missing field).
            found[key] = RunSummary.from_db(alias, columns, values)
    return found


def _upsert_summaries(summaries: list[RunSummary]) -> None:
    if connection.vendor == "postgresql":
        # One constant statement, the rows in one JSON parameter (tracing.pg).
        fields, updated = _SUMMARY_VALUES, timezone.now()
        pg.execute(
            _upsert_pg_sql(),
            ([s.workflow_id, s.run_id, *fields(s), updated] for s in summaries),
        )
        return
    sqlite = connection.vendor == "sqlite"
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    params: list[Any] = []
    for summary in summaries:
        params += [summary.workflow_id, summary.run_id]
        for name in _SUMMARY_FIELDS:
            value = getattr(summary, name)
            if name in _SUMMARY_JSON:
                value = _compact_json(value) if sqlite else _adapt_json(value)
            params.append(value)
        params.append(now)
    with connection.cursor() as cursor:
        cursor.execute(_upsert_sql(len(summaries), "%s"), params)


@functools.cache
def _upsert_pg_sql() -> str:
    quote = connection.ops.quote_name
    columns = ("workflow_id", "run_id", *_SUMMARY_FIELDS, "updated_at")
    updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in columns[2:])
    return pg.upsert_sql(RunSummary, columns, ("workflow_id", "run_id"), updates)


@functools.cache
def _upsert_sql(rows: int, marker: str) -> str:
    quote = connection.ops.quote_name
    columns = ["workflow_id", "run_id", *_SUMMARY_FIELDS, "updated_at"]
    placeholder = "(" + ", ".join([marker] * len(columns)) + ")"
    updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in columns[2:])
    return (
        f"INSERT INTO {quote(RunSummary._meta.db_table)} "
        f"({', '.join(quote(c) for c in columns)}) VALUES {', '.join([placeholder] * rows)} "
        f"ON CONFLICT (workflow_id, run_id) DO UPDATE SET {updates}"
    )


def apply_rows(summary: RunSummary, rows: list[dict[str, Any]]) -> None:
    """Fold newly stored spans of one run into its summary."""
    summary.span_count += len(rows)
    attempts: dict[str, dict[str, bool]] = summary.model_attempts
    agents: list[str] = summary.agents
    history: dict[str, Any] = summary.history
    span_tokens: list[int] | None = history.get("span_tokens") if "calls" in history else None
    by_call: dict[str, list[int]] = history.setdefault("by_call", {}) if span_tokens else {}
    for row in rows:
        if not summary.workflow_type and row.get("workflow_type"):
            summary.workflow_type = row["workflow_type"]
        if row["agent"] and len(agents) < MAX_SUMMARY_AGENTS and row["agent"] not in agents:
            agents.append(row["agent"])
        if row["kind"] in MODEL_KINDS:
            if span_tokens is not None:
                span_tokens[0] += row["tokens_in"] or 0
                span_tokens[1] += row["tokens_out"] or 0
                if row["tokens_in"] is not None or row["tokens_out"] is not None:
                    # Which calls a span reported usage for ("" for none known).
                    counted = by_call.setdefault(row["activity_id"] or "", [0, 0])
                    counted[0] += row["tokens_in"] or 0
                    counted[1] += row["tokens_out"] or 0
            else:
                summary.tokens_in += row["tokens_in"] or 0
                summary.tokens_out += row["tokens_out"] or 0
        if summary.first_span_ns is None or row["start_ns"] < summary.first_span_ns:
            summary.first_span_ns = row["start_ns"]
        if summary.last_span_ns is None or row["end_ns"] > summary.last_span_ns:
            summary.last_span_ns = row["end_ns"]
        failed = row["status_code"] == STATUS_ERROR
        if failed and (summary.last_error_ns is None or row["end_ns"] >= summary.last_error_ns):
            summary.last_error_ns = row["end_ns"]
            summary.last_error = row["status_message"] or f"{row['name']} failed"
        if is_model_span(row):
            per_call = attempts.setdefault(row["activity_id"], {})
            attempt = _attempt_key(row)
            if attempt is not None:
                per_call[attempt] = per_call.get(attempt, False) or failed
    if span_tokens is not None:
        _count_with_history(summary)
        return
    summary.model_calls = len(attempts)
    summary.attempts = sum(len(per_call) for per_call in attempts.values())
    summary.failed_attempts = sum(
        1 for per_call in attempts.values() for failed in per_call.values() if failed
    )


def _span_attempts(per_call: dict[str, bool]) -> int:
    """Attempts the spans show: numbered ones, else one per RunActivity span. (Two
    instrumentations may both report one attempt: numbered and as a span of its own.)"""
    numbered = sum(1 for key in per_call if key.isdigit())
    return numbered or len(per_call)


def _count_with_history(summary: RunSummary) -> None:
    """Calls, attempts and tokens once the run's history has been read (tracing.links):
    the history counts every model call and attempt, and its usage stands in for
    the calls no span reported usage for. When some model span's usage belongs
    to no known call, the spans' usage stands alone: nothing is counted twice."""
    history = summary.history
    calls: dict[str, list[Any]] = history["calls"]
    span_in, span_out = history["span_tokens"]
    by_call: dict[str, list[int]] = history.setdefault("by_call", {})
    summary.tokens_in, summary.tokens_out = span_in, span_out
    if "" not in by_call:
        for activity_id, call in calls.items():
            if activity_id not in by_call:
                summary.tokens_in += call[2] or 0
                summary.tokens_out += call[3] or 0
    attempts = summary.model_attempts
    total = failed = 0
    for activity_id in set(attempts) | set(calls):
        per_call = attempts.get(activity_id, {})
        known = calls.get(activity_id)
        if known and known[0]:
            count = max(_span_attempts(per_call), known[0])
            total += count
            # Every attempt before the last failed; the last as the history says.
            failed += count - 1 + (1 if known[1] else 0)
        else:
            total += len(per_call)
            failed += sum(1 for value in per_call.values() if value)
    summary.model_calls = len(set(attempts) | set(calls))
    summary.attempts = total
    summary.failed_attempts = failed


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    return {
        "workflow_id": summary.workflow_id,
        "run_id": summary.run_id,
        "workflow_type": summary.workflow_type,
        "span_count": summary.span_count,
        "model_calls": summary.model_calls,
        "attempts": summary.attempts,
        "failed_attempts": summary.failed_attempts,
        "tokens_in": summary.tokens_in,
        "tokens_out": summary.tokens_out,
        "agents": list(summary.agents),
        "first_span_ns": summary.first_span_ns,
        "last_span_ns": summary.last_span_ns,
        "last_error": summary.last_error,
        "health_problems": summary.health_problems,
    }


def stored_state(workflow_id: str, run_id: str) -> str:
    """What changes whenever a span of the run is stored or adopted: read from the
    run's index alone, no span rows."""
    state = Span.objects.filter(workflow_id=workflow_id, run_id=run_id).aggregate(
        count=Count("id"), last=Max("id")
    )
    return f"{state['count']}.{state['last']}" if state["count"] else "0"


def span_row(span: Span) -> dict[str, Any]:
    """A stored span as the same dict shape tracing.otlp produces."""
    row: dict[str, Any] = {c: getattr(span, c) for c in _COLUMNS}
    data = span.data or {}
    row["attributes"] = data.get("attributes", {})
    row["resource"] = data.get("resource", {})
    row["events"] = data.get("events", [])
    row["links"] = data.get("links", [])
    row["scope"] = data.get("scope", "")
    for key in _OPTIONAL_DATA_KEYS:
        if key in data:
            row[key] = data[key]
    return row


class SpanStub(NamedTuple):
    """What a tree and a time axis need of a span; no attributes."""

    pk: int
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    kind: str
    activity_id: str
    name: str
    attempt: int | None
    inherited: bool

    # Read like a row (span["parent_span_id"], span.get("activity_id")) by code that
    # walks every span of a run, e.g. the trace-health report.
    def __getitem__(self, key: Any) -> Any:
        return getattr(self, key) if isinstance(key, str) else tuple.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


_STUB = ("id", "trace_id", "span_id", "parent_span_id", "start_ns", "end_ns", "kind",
         "activity_id", "name", "attempt", "inherited")  # fmt: skip
# Rows fetched per query by primary key: under SQLite's parameter limit.
_PK_CHUNK = 900


@dataclass
class Skeleton:
    """Every span of one run as a stub (a run may have 100,000 of them), and which
    spans belong to it only through an ancestor that carries its ids."""

    stubs: list[SpanStub]
    # pk of a span tied to the run at query time -> pk of the ancestor that ties it.
    carriers: dict[int, int] = field(default_factory=dict)


def run_skeleton(workflow_id: str, run_id: str) -> Skeleton:
    """The stubs of spans_for_run(): the same spans, a fraction of the memory."""
    # One string object per distinct trace id, parent, kind and activity id: a
    # run's 100,000 spans share a handful of them.
    shared: dict[str, str] = {}
    own: list[SpanStub] = []
    query = Span.objects.filter(workflow_id=workflow_id, run_id=run_id).values_list(*_STUB)
    for values in query.iterator(chunk_size=5000):
        pk, trace_id, span_id, parent, start, end, kind, activity_id, name, attempt, inherited = (
            values
        )
        own.append(
            SpanStub(
                pk, shared.setdefault(trace_id, trace_id), span_id,
                shared.setdefault(parent, parent), start, end, shared.setdefault(kind, kind),
                shared.setdefault(activity_id, activity_id), name, attempt, inherited,
            )
        )  # fmt: skip
    traces = {s.trace_id for s in own}
    if not traces:
        return Skeleton(own)
    orphans = [
        SpanStub(*values)
        for values in Span.objects.filter(workflow_id="", trace_id__in=traces).values_list(*_STUB)
    ]
    if not orphans:
        return Skeleton(own)
    owners = {(s.trace_id, s.span_id): s.pk for s in own}
    by_key = {(s.trace_id, s.span_id): s for s in orphans}
    carriers: dict[int, int] = {}
    for orphan in orphans:
        node, seen = orphan, 0
        while node.parent_span_id and seen < 256:
            key = (node.trace_id, node.parent_span_id)
            if key in owners:
                carriers[orphan.pk] = owners[key]
                break
            parent = by_key.get(key)
            if parent is None or parent is orphan:
                break
            node, seen = parent, seen + 1
    own.extend(o for o in orphans if o.pk in carriers)
    return Skeleton(own, carriers)


def span_rows(
    pks: Iterable[int], with_data: Callable[[dict[str, Any]], bool]
) -> dict[int, dict[str, Any]]:
    """Rows of these spans by pk, in span_row()'s shape (plus "pk"); attributes,
    events, links and resource only where with_data(row) says they are needed."""
    wanted = sorted(set(pks))
    rows: dict[int, dict[str, Any]] = {}
    table = connection.ops.quote_name(Span._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in ["id", *_COLUMNS])
    with connection.cursor() as cursor:
        for start in range(0, len(wanted), _PK_CHUNK):
            chunk = wanted[start : start + _PK_CHUNK]
            marks = ", ".join(["%s"] * len(chunk))
            # Plain SQL: the ORM's per-value converters cost more than the rows.
            cursor.execute(f"SELECT {columns} FROM {table} WHERE id IN ({marks})", chunk)
            need: list[int] = []
            for values in cursor.fetchall():
                row: dict[str, Any] = dict(zip(_COLUMNS, values[1:], strict=True))
                row["inherited"] = bool(row["inherited"])
                row.update(pk=values[0], attributes={}, resource={}, events=[], links=[], scope="")
                rows[values[0]] = row
                if with_data(row):
                    need.append(values[0])
            if not need:
                continue
            marks = ", ".join(["%s"] * len(need))
            cursor.execute(f"SELECT id, data FROM {table} WHERE id IN ({marks})", need)
            for pk, raw in cursor.fetchall():
                data = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
                data = data if isinstance(data, dict) else {}
                row = rows[pk]
                row["attributes"] = data.get("attributes", {})
                row["resource"] = data.get("resource", {})
                row["events"] = data.get("events", [])
                row["links"] = data.get("links", [])
                row["scope"] = data.get("scope", "")
    return rows


def inherit_ids(rows: dict[int, dict[str, Any]], carriers: dict[int, int]) -> None:
    """Give rows tied to their run through an ancestor that ancestor's Temporal ids."""
    for pk, carrier in carriers.items():
        if pk in rows and carrier in rows:
            _take_ids(rows[pk], rows[carrier])


def spans_for_run(workflow_id: str, run_id: str) -> list[dict[str, Any]]:
    """Every span of a run, including descendants that only an ancestor ties to it."""
    rows = [span_row(s) for s in Span.objects.filter(workflow_id=workflow_id, run_id=run_id)]
    traces = {r["trace_id"] for r in rows}
    if traces:
        nodes: dict[SpanKey, dict[str, Any]] = {(r["trace_id"], r["span_id"]): r for r in rows}
        orphans = [span_row(s) for s in Span.objects.filter(workflow_id="", trace_id__in=traces)]
        for orphan in orphans:
            nodes[(orphan["trace_id"], orphan["span_id"])] = orphan
        found = nearest_carriers([(o["trace_id"], o["span_id"]) for o in orphans], nodes)
        for orphan in orphans:
            source = found[(orphan["trace_id"], orphan["span_id"])]
            if source is not None and (source["workflow_id"], source["run_id"]) == (
                workflow_id,
                run_id,
            ):
                _take_ids(orphan, source)
                rows.append(orphan)
    rows.sort(key=lambda r: (r["start_ns"], r["end_ns"]))
    return rows


def spans_of_activities(
    workflow_id: str, run_id: str, activity_ids: Iterable[str]
) -> list[dict[str, Any]]:
    """A run's spans of these activities: what a reset run inherits from its base run."""
    wanted = list(activity_ids)
    if not wanted:
        return []
    query = Span.objects.filter(workflow_id=workflow_id, run_id=run_id, activity_id__in=wanted)
    return [span_row(s) for s in query]


def spans_mentioning(workflow_id: str, run_id: str) -> dict[str, int]:
    """Spans of this workflow that are not the run's: other runs of the workflow id
    (a reset's base, an earlier run of a chain) and spans that name the workflow
    but no run yet. The run page says so rather than "no spans"."""
    others = Span.objects.filter(workflow_id=workflow_id).exclude(run_id=run_id)
    return {
        "other_runs": others.exclude(run_id="").count(),
        "no_run": others.filter(run_id="").count(),
    }


# -- ties from the run's history (tracing.links) ---------------------------------------
# Spans that carry no Temporal ids and have no ancestor that does
# (OpenAIAgentsPlugin's own OTel mode) get their run from the spans the run's
# history names. The ties are kept (TraceLink), so a span that arrives later,
# hours later for workflow-side spans, is tied at ingest.

_LINK_NODE = (*_SUMMARY_INPUT, "inherited")


def _link_by_history(inserted: list[dict[str, Any]], result: IngestResult) -> None:
    """Tie the batch's spans that lack ids of their own through their traces' stored ties."""
    traces = {r["trace_id"] for r in inserted if not r["workflow_id"] or r["inherited"]}
    if not traces:
        return
    linked = set(TraceLink.objects.filter(trace_id__in=traces).values_list("trace_id", flat=True))
    if linked:
        _apply_links(linked, result)


def _run_link(link: TraceLink) -> history_links.RunLink:
    return history_links.RunLink(
        trace_id=link.trace_id,
        span_id=link.span_id,
        kind=link.kind,
        activity_id=link.activity_id,
        activity_type=link.activity_type,
        scheduled_ns=link.scheduled_ns,
        closed_ns=link.closed_ns,
        workflow_id=link.workflow_id,
        run_id=link.run_id,
    )


def _apply_links(traces: set[str], result: IngestResult | None) -> int:
    """Give the spans of these traces the ids their ties say; recount the runs concerned."""
    links = [_run_link(link) for link in TraceLink.objects.filter(trace_id__in=traces)]
    nodes = {
        (n["trace_id"], n["span_id"]): n
        for n in Span.objects.filter(trace_id__in=traces).values(*_LINK_NODE)
    }
    changes = history_links.assign(nodes, links)
    if not changes:
        return 0
    newly: list[dict[str, Any]] = []
    affected: set[RunKey] = set()
    updates: dict[tuple[Any, ...], list[int]] = {}
    for key, new in changes.items():
        node = nodes[key]
        if node["workflow_id"] and node["run_id"]:
            affected.add((node["workflow_id"], node["run_id"]))
        else:
            newly.append(node)
        affected.add((new["workflow_id"], new["run_id"]))
        node.update(new, inherited=True, workflow_type="")
        updates.setdefault(tuple(new[k] for k in _IDS), []).append(node["id"])
    for values, ids in updates.items():
        for start in range(0, len(ids), INSERT_CHUNK):
            Span.objects.filter(id__in=ids[start : start + INSERT_CHUNK]).update(
                inherited=True, **dict(zip(_IDS, values, strict=True))
            )
    rollups.apply(newly)
    summaries = recount_summaries(affected)
    if result is not None:
        result.runs.update(summaries)
        for node in newly:
            key = (node["workflow_id"], node["run_id"])
            result.new_spans[key] = result.new_spans.get(key, 0) + 1
    return len(changes)


_KEPT_ON_RECOUNT = (
    "orphan_spans", "cycle_spans", "duplicate_spans", "late_spans", "closed_ns",
    "history_health", "history_problems", "health_problems",
)  # fmt: skip


def recount_summaries(keys: Iterable[RunKey]) -> dict[RunKey, dict[str, Any]]:
    """Count these runs' summaries again from all their stored spans (and their history)."""
    wanted = set(keys)
    if not wanted:
        return {}
    existing = _load_summaries(wanted)
    summaries: list[RunSummary] = []
    for key in sorted(wanted):
        old = existing.get(key)
        summary = RunSummary(
            workflow_id=key[0],
            run_id=key[1],
            workflow_type=old.workflow_type if old else "",
            agents=[],
            model_attempts={},
            history={},
        )
        if old is not None:
            # What spans do not recount (tracing.health's counters) stays as it was.
            for name in _KEPT_ON_RECOUNT:
                setattr(summary, name, getattr(old, name))
        if old is not None and "calls" in old.history:
            summary.history = {"calls": old.history["calls"], "span_tokens": [0, 0], "by_call": {}}
        rows = list(Span.objects.filter(workflow_id=key[0], run_id=key[1]).values(*_SUMMARY_INPUT))
        apply_rows(summary, rows)
        summaries.append(summary)
    _upsert_summaries(summaries)
    return {(s.workflow_id, s.run_id): summary_dict(s) for s in summaries}


def link_run(workflow_id: str, run_id: str, found: list[history_links.HistoryLink]) -> int:
    """Keep what a run's history ties (tracing.links.history_links) and tie the spans.

    Called with the history in hand: by the run page, and by the dashboard's
    linker for runs with spans still untied. Returns how many spans changed.
    """
    if not found:
        return 0
    key = (workflow_id, run_id)
    wanted = {
        (link.trace_id, link.span_id, link.kind, link.activity_id, link.activity_type,
         link.scheduled_ns, link.closed_ns)
        for link in found
    }  # fmt: skip
    calls = {
        activity_id: [link.attempts, link.failed, link.tokens_in, link.tokens_out]
        for activity_id, link in history_links.model_calls(found).items()
    }
    with _writer():
        stored = set(
            TraceLink.objects.filter(workflow_id=workflow_id, run_id=run_id).values_list(
                "trace_id", "span_id", "kind", "activity_id", "activity_type", "scheduled_ns",
                "closed_ns",
            )
        )  # fmt: skip
        summary = _load_summaries([key]).get(key)
        history = summary.history if summary is not None else {}
        if stored == wanted and history.get("calls") == calls:
            return 0
        if stored != wanted:
            TraceLink.objects.filter(workflow_id=workflow_id, run_id=run_id).delete()
            TraceLink.objects.bulk_create(
                TraceLink(
                    trace_id=t, span_id=s, kind=k, activity_id=a, activity_type=at,
                    scheduled_ns=sn, closed_ns=cn, workflow_id=workflow_id, run_id=run_id,
                )
                for t, s, k, a, at, sn, cn in wanted
            )  # fmt: skip
        changed = _apply_links({link.trace_id for link in found}, None)
        summary = _load_summaries([key]).get(key)
        history = summary.history if summary is not None else {}
        if history.get("calls") == calls:
            return changed
        if summary is not None and "calls" in history:
            summary.history = {**history, "calls": calls}
            _count_with_history(summary)
            _upsert_summaries([summary])
        elif summary is None or _needs_history(workflow_id, run_id, summary):
            # First read of this run's history: count its spans again per call.
            summary = summary or RunSummary(
                workflow_id=workflow_id, run_id=run_id, agents=[], model_attempts={}
            )
            summary.history = {"calls": calls, "span_tokens": [0, 0], "by_call": {}}
            _upsert_summaries([summary])
            recount_summaries([key])
        return changed


def _needs_history(workflow_id: str, run_id: str, summary: RunSummary) -> bool:
    """Whether the run's own spans fall short: some are tied only through the history,
    or no model span reported usage. Otherwise its spans count alone (a reset run's
    history also holds the calls it inherited; tracing.lineage says which)."""
    if not summary.tokens_in and not summary.tokens_out:
        return True
    tied = Span.objects.filter(workflow_id=workflow_id, run_id=run_id, inherited=True)
    linked = TraceLink.objects.filter(workflow_id=workflow_id, run_id=run_id)
    traces = set(linked.values_list("trace_id", flat=True))
    return (
        tied.filter(trace_id__in=traces)
        .exclude(
            trace_id__in=Span.objects.filter(
                workflow_id=workflow_id, run_id=run_id, inherited=False
            ).values("trace_id")
        )
        .exists()
    )


@dataclass
class Untied:
    """Spans that no id, ancestor or history tie has given a run yet (recent ones)."""

    # (first start, last end) of spans without a workflow id
    window: tuple[int, int] | None = None
    # spans that know their workflow but not its run: (span pk, workflow id, start)
    runless: list[tuple[int, str, int]] = field(default_factory=list)


def untied(since_ns: int, limit: int = 1000) -> Untied:
    """What the dashboard's linker still has to tie: one small query per kind."""
    found = Untied()
    window = Span.objects.filter(workflow_id="", end_ns__gte=since_ns).aggregate(
        start=Min("start_ns"), end=Max("end_ns")
    )
    if window["start"] is not None:
        found.window = (window["start"], window["end"])
    found.runless = list(
        Span.objects.filter(run_id="", end_ns__gte=since_ns)
        .exclude(workflow_id="")
        .order_by("id")
        .values_list("id", "workflow_id", "start_ns")[:limit]
    )
    return found


def assign_run(span_ids: list[int], workflow_id: str, run_id: str) -> int:
    """Give run-less spans of a workflow the run that was open when they started."""
    with _writer():
        changed = Span.objects.filter(id__in=span_ids, workflow_id=workflow_id, run_id="").update(
            run_id=run_id, inherited=True
        )
        if changed:
            rows = list(Span.objects.filter(id__in=span_ids).values(*_SUMMARY_INPUT))
            for row in rows:
                row["workflow_type"] = ""
            rollups.apply(rows)
            recount_summaries([(workflow_id, run_id)])
    return changed


def runs_without_history(keys: set[RunKey]) -> set[RunKey]:
    """Of these runs, those with spans stored whose history has not been read."""
    found = RunSummary.objects.filter(workflow_id__in={w for w, _ in keys}).values_list(
        "workflow_id", "run_id", "history"
    )
    return {
        (w, r)
        for w, r, history in found
        if (w, r) in keys and "calls" not in (history if isinstance(history, dict) else {})
    }

"""Search over what the agents said: prompts, outputs, tool arguments and errors.

An index answers: FTS5 on SQLite (migration 0010), a GIN-indexed tsvector per
span on PostgreSQL (migration 0011). It is filled behind the receiver, so ingest
does not pay for it: ``index_pending`` indexes the spans stored since the last
one indexed, every few seconds in the forwarder's maintenance loop (``serve``)
and before each search. A span's name, status message and events (errors) are
indexed, and every text value of its attributes (prompts, outputs, tool
arguments), except for the spans of Temporal's own instrumentation, whose
attributes are ids. Without an index (another database, or one migrated
elsewhere) the span rows are searched directly: a scan, so it reads only the
newest SCAN_SPANS spans. A search is words, each matched as a word prefix, all
of them in the same span; the text is never passed to the database as query
syntax (words are runs of word characters, quoted as terms).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError, connection, transaction
from django.db.models import Q, QuerySet

from tracing.models import Span

logger = logging.getLogger(__name__)

RunKey = tuple[str, str]

# A span's indexed text, as SQL over the row ``new`` (also the migration's trigger).
BODY_SQL = """
    coalesce(new.name, '') || ' ' || coalesce(new.status_message, '') || ' ' ||
    CASE WHEN new.kind = 'temporal' THEN '' ELSE
      coalesce((SELECT group_concat(value, ' ') FROM json_tree(new.data, '$.attributes')
                WHERE type = 'text'), '') END || ' ' ||
    coalesce((SELECT group_concat(value, ' ') FROM json_tree(new.data, '$.events')
              WHERE type = 'text'), '')
"""
# Spans indexed per transaction: short, so the receiver's writes wait little.
INDEX_BATCH = 2000
# Spans a search indexes before it answers, at most; the maintenance loop does the rest.
SEARCH_CATCH_UP = 20_000
# How often the maintenance loop indexes new spans.
INDEX_SECONDS = 2.0

# Runs a list search returns at most (newest spans first).
MAX_RUNS = 500
# Spans of one run a page marks at most.
MAX_SPANS = 2000
# Without an index, a search reads at most this many of the newest spans.
SCAN_SPANS = 200_000
# Words a search keeps (the rest are ignored).
MAX_WORDS = 8
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text)[:MAX_WORDS]


def fts_query(text: str) -> str:
    """The FTS5 query for these words: each a quoted prefix term, all required."""
    return " ".join(f'"{word}"*' for word in words(text))


def _fts() -> bool:
    return connection.vendor == "sqlite"


def _pg() -> bool:
    return connection.vendor == "postgresql"


# PostgreSQL: the same text as SQLite's BODY_SQL, over the row ``s`` (also migration
# 0011's trigger), capped so one huge span cannot exceed tsvector's 1 MB.
BODY_PG = """
    left(
      coalesce(s.name, '') || ' ' || coalesce(s.status_message, '') || ' ' ||
      CASE WHEN s.kind = 'temporal' THEN '' ELSE
        coalesce((SELECT string_agg(v #>> '{}', ' ')
                  FROM jsonb_path_query(s.data -> 'attributes', 'strict $.**') AS v
                  WHERE jsonb_typeof(v) = 'string'), '') END || ' ' ||
      coalesce((SELECT string_agg(v #>> '{}', ' ')
                FROM jsonb_path_query(s.data -> 'events', 'strict $.**') AS v
                WHERE jsonb_typeof(v) = 'string'), ''),
      100000)
"""
# Span ids are taken when a row is inserted, not when it commits: with several
# receivers a lower id can commit after a higher one was indexed. Each maintenance
# round looks again this far below the highest id indexed, for spans without a row.
# A search's own catch-up does not (lookback=0): that look costs ~16-22 ms at 1M
# spans, twice a search (runs, then snippets), and a span that committed late is
# indexed by the next maintenance round, within INDEX_SECONDS.
PG_LOOKBACK = 50_000
# The floor is a parameter, read first, and bounds both sides: with the floor a
# subquery, PostgreSQL hashed the whole index table against the span ids above
# it (a sequential read of a row per span stored: ~0.5 s at 1M spans, on every
# search and every maintenance round); bounded, it merges two short index ranges.
_PG_FLOOR_SQL = "SELECT coalesce(max(span_id), 0) FROM tracing_spanwords"
_PG_INDEX_SQL = f"""
    INSERT INTO tracing_spanwords (span_id, words)
    SELECT s.id, to_tsvector('simple', {BODY_PG}) FROM tracing_span AS s
    WHERE s.id > %s
      AND NOT EXISTS (
        SELECT 1 FROM tracing_spanwords AS w WHERE w.span_id = s.id AND w.span_id > %s)
    ORDER BY s.id LIMIT %s
    ON CONFLICT (span_id) DO NOTHING
"""


def pg_query(text: str) -> str:
    """The tsquery for these words: each a quoted prefix lexeme, all required."""
    return " & ".join(f"'{word}':*" for word in words(text))


# Every span gets a row (an empty one when it holds no text), so the highest row
# id indexed is where the next round starts: ids only grow (AUTOINCREMENT).
_INDEX_SQL = f"""
    INSERT INTO tracing_spantext(rowid, body)
    SELECT new.id, {BODY_SQL} FROM tracing_span AS new
    WHERE new.id > (SELECT coalesce(max(rowid), 0) FROM tracing_spantext)
    ORDER BY new.id LIMIT %s
"""


def index_pending(limit: int = SEARCH_CATCH_UP, lookback: int = PG_LOOKBACK) -> int:
    """Index the spans stored since the last one indexed, up to ``limit``; how many.
    On PostgreSQL, also those up to ``lookback`` ids below it that have no row yet."""
    if not (_fts() or _pg()):
        return 0
    sql = _INDEX_SQL if _fts() else _PG_INDEX_SQL
    done = 0
    while done < limit:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                batch = min(INDEX_BATCH, limit - done)
                if _fts():
                    cursor.execute(sql, [batch])
                else:
                    cursor.execute(_PG_FLOOR_SQL)
                    floor = max(int(cursor.fetchone()[0]) - lookback, 0)
                    cursor.execute(sql, [floor, floor, batch])
                added = cursor.rowcount
        except DatabaseError:
            logger.warning("indexing spans for search failed", exc_info=True)
            return done
        done += max(added, 0)
        if added < INDEX_BATCH:
            break
    return done


async def serve() -> None:
    """Keep the index current, for the life of the maintenance worker."""
    while True:
        try:
            await sync_to_async(index_pending, thread_sensitive=False)(10 * INDEX_BATCH)
        except Exception:
            logger.exception("search indexing round failed")
        await asyncio.sleep(INDEX_SECONDS)


def matching_runs(text: str, limit: int = MAX_RUNS) -> set[RunKey]:
    """Runs with a span whose text has every word of ``text``."""
    if not words(text):
        return set()
    if _fts() or _pg():
        index_pending(lookback=0)
        runs = _windowed_runs(text, limit)
        if runs is not None:
            return runs
    return set(
        _scan(text)
        .exclude(run_id="")
        .order_by("-start_ns")
        .values_list("workflow_id", "run_id")
        .distinct()[:limit]
    )


# The index's matches are read newest first, in windows of span ids that grow
# fourfold, until ``limit`` runs are found: a common word costs one window of the
# newest spans, not a join of every span that holds it (13,500 spans for "rate
# limit" in bench/generate.py's million: ~60 ms of SQLite's CPU, ~100 ms of
# PostgreSQL's, against ~5 ms for a window).
FIRST_WINDOW = 50_000


def _windowed_runs(text: str, limit: int) -> set[RunKey] | None:
    """The ``limit`` runs with the newest matching spans, or None without an index."""
    if _fts():
        top_sql = "SELECT coalesce(max(rowid), 0) FROM tracing_spantext"
        sql = (
            "SELECT s.workflow_id, s.run_id, max(s.start_ns) FROM tracing_spantext AS t "
            "JOIN tracing_span AS s ON s.id = t.rowid "
            "WHERE tracing_spantext MATCH %s AND t.rowid > %s AND t.rowid <= %s "
            "AND s.run_id != '' GROUP BY s.workflow_id, s.run_id"
        )
        query = fts_query(text)
    else:
        top_sql = "SELECT coalesce(max(span_id), 0) FROM tracing_spanwords"
        sql = (
            "SELECT s.workflow_id, s.run_id, max(s.start_ns) FROM tracing_spanwords AS w "
            "JOIN tracing_span AS s ON s.id = w.span_id "
            "WHERE w.words @@ to_tsquery('simple', %s) AND w.span_id > %s "
            "AND w.span_id <= %s AND s.run_id <> '' GROUP BY s.workflow_id, s.run_id"
        )
        query = pg_query(text)
    top_rows = _pg_rows(top_sql, [])
    if top_rows is None:
        return None
    top = int(top_rows[0][0])
    newest: dict[RunKey, int] = {}
    window = FIRST_WINDOW
    while top > 0 and len(newest) < limit:
        low = max(top - window, 0)
        found = _pg_rows(sql, [query, low, top])
        if found is None:
            return None
        for workflow_id, run_id, start_ns in found:
            key = (workflow_id, run_id)
            newest[key] = max(newest.get(key, start_ns), start_ns)
        top, window = low, window * 4
    return set(sorted(newest, key=lambda k: newest[k], reverse=True)[:limit])


def matching_spans(text: str, workflow_id: str, run_id: str) -> set[str]:
    """Span ids of one run whose text has every word of ``text``."""
    if not words(text):
        return set()
    if _fts():
        index_pending(lookback=0)
        sql = (
            "SELECT s.span_id FROM tracing_spantext AS t "
            "JOIN tracing_span AS s ON s.id = t.rowid "
            "WHERE tracing_spantext MATCH %s AND s.workflow_id = %s AND s.run_id = %s LIMIT %s"
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, [fts_query(text), workflow_id, run_id, MAX_SPANS])
                return {row[0] for row in cursor.fetchall()}
        except DatabaseError:
            pass
    elif _pg():
        index_pending(lookback=0)
        sql = (
            "SELECT s.span_id FROM tracing_spanwords AS w "
            "JOIN tracing_span AS s ON s.id = w.span_id "
            "WHERE w.words @@ to_tsquery('simple', %s) AND s.workflow_id = %s "
            "AND s.run_id = %s LIMIT %s"
        )
        found = _pg_rows(sql, [pg_query(text), workflow_id, run_id, MAX_SPANS])
        if found is not None:
            return {row[0] for row in found}
    return set(
        _scan(text)
        .filter(workflow_id=workflow_id, run_id=run_id)
        .values_list("span_id", flat=True)[:MAX_SPANS]
    )


# Characters of a span's JSON text that say nothing in a snippet.
_JSON_PUNCTUATION = re.compile(r'[\[\]{}"\\]+')
_JSON_KEYS = re.compile(
    r"\b(?:role|content|type|text|name|arguments|tool_calls|parts|output|input|id)\s*:\s*"
    r"(?:(?:user|assistant|system|tool|output_text|input_text|message|function_call)\b)?"
    r"\s*,?\s*"
)
SNIPPET_BEFORE = 16
SNIPPET_AFTER = 90


def _snippet(body: str, text: str) -> tuple[str, str, str] | None:
    """(before, the word found, after) around the first word of ``text`` in ``body``."""
    flat = _JSON_KEYS.sub(" ", _JSON_PUNCTUATION.sub(" ", body))
    flat = " ".join(flat.replace(" , ", " ").split())
    for word in words(text):
        found = re.search(rf"\b{re.escape(word)}\w*", flat, re.IGNORECASE | re.UNICODE)
        if found:
            start, end = found.span()
            before = flat[max(0, start - SNIPPET_BEFORE) : start].lstrip()
            after = flat[end : end + SNIPPET_AFTER].rstrip()
            return (
                ("…" if start > SNIPPET_BEFORE else "") + before,
                found.group(0),
                after + ("…" if end + SNIPPET_AFTER < len(flat) else ""),
            )
    return None


def snippets(text: str, keys: set[RunKey]) -> dict[RunKey, tuple[str, str, str]]:
    """Where the words were found, one snippet per run (from the index's database)."""
    if not words(text) or not keys or not (_fts() or _pg()):
        return {}
    index_pending(lookback=0)
    run_ids = sorted({r for _, r in keys})
    marks = ", ".join(["%s"] * len(run_ids))
    sql = (
        "SELECT s.workflow_id, s.run_id, t.body FROM tracing_spantext AS t "
        "JOIN tracing_span AS s ON s.id = t.rowid "
        f"WHERE tracing_spantext MATCH %s AND s.run_id IN ({marks}) "
        "ORDER BY s.start_ns LIMIT %s"
    )
    params: list[Any] = [fts_query(text), *run_ids, 50 * len(keys)]
    if _pg():
        # The text is not kept twice: it is made again for the few spans shown.
        # The runs' spans first (their index), then the match on each: a common
        # word's every span is never read.
        workflow_ids = sorted({w for w, _ in keys})
        sql = (
            "WITH c AS MATERIALIZED (SELECT id FROM tracing_span WHERE workflow_id IN "
            f"({', '.join(['%s'] * len(workflow_ids))}) AND run_id IN ({marks})) "
            f"SELECT s.workflow_id, s.run_id, {BODY_PG} FROM c "
            "JOIN tracing_spanwords AS w ON w.span_id = c.id "
            "JOIN tracing_span AS s ON s.id = c.id "
            "WHERE w.words @@ to_tsquery('simple', %s) ORDER BY s.start_ns LIMIT %s"
        )
        params = [*workflow_ids, *run_ids, pg_query(text), 50 * len(keys)]
    found: dict[RunKey, tuple[str, str, str]] = {}
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            for workflow_id, run_id, body in cursor.fetchall():
                key = (workflow_id, run_id)
                if key in keys and key not in found:
                    piece = _snippet(body or "", text)
                    if piece is not None:
                        found[key] = piece
    except DatabaseError:
        return {}
    return found


def _pg_rows(sql: str, params: list[str | int]) -> list[tuple[Any, ...]] | None:
    """The rows of a search on the index (either database's), or None without it
    (then scan)."""
    try:
        # A savepoint: a failed statement must not break the caller's transaction.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
    except DatabaseError:
        logger.warning("search index unavailable; scanning the newest spans", exc_info=True)
        return None


def _scan(text: str) -> QuerySet[Span]:
    """Spans whose text holds every word (case-insensitive), without an index."""
    spans = Span.objects.all()
    newest = Span.objects.order_by("-id").values_list("id", flat=True).first()
    if newest is not None:
        spans = spans.filter(id__gt=newest - SCAN_SPANS)
    for word in words(text):
        spans = spans.filter(
            Q(data__icontains=word) | Q(name__icontains=word) | Q(status_message__icontains=word)
        )
    return spans

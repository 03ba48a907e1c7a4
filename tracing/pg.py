"""PostgreSQL: ingest's upserts as one constant statement per table.

Django's cursor binds parameters on the client (psycopg's ClientCursor): a
multi-row upsert of a batch's rollup cells is a new statement text every
batch, with thousands of parameters (79 per cell) that psycopg quotes one by
one in Python, and a statement that long is never in psycopg's cache, so it is
split into its placeholders again each time. Here the rows go as one JSON
array (orjson, in C) in one parameter of a statement whose text never changes,
and the server takes the array apart (``jsonb_array_elements``).

Still Django's cursor, so Django's query log (DEBUG, captured queries) and its
errors are as for any query, and nothing is prepared on the server: safe
behind a connection pooler in transaction mode.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from django.db import connection
from django.db.models import Model

_TEXT = frozenset({"CharField", "TextField"})
_JSON = frozenset({"JSONField"})


def rows_param(rows: Iterable[Sequence[Any]]) -> str:
    """The rows, each a list of column values in the statement's order (JSON
    columns as Python values), as the statement's one parameter."""
    return orjson.dumps(list(rows)).decode()


@functools.cache
def upsert_sql(
    model: type[Model], columns: tuple[str, ...], conflict: tuple[str, ...], updates: str,
    returning: str = "",
) -> str:  # fmt: skip
    """INSERT ... SELECT the columns from the rows of one JSON array parameter
    ON CONFLICT (conflict) DO UPDATE SET updates [RETURNING returning]."""
    quote = connection.ops.quote_name
    fields = {f.attname: f for f in model._meta.concrete_fields}
    selected = []
    for at, column in enumerate(columns):
        field = fields[column]
        internal = field.get_internal_type()
        if internal in _JSON:
            selected.append(f"r -> {at}")
        elif internal in _TEXT:
            # Text, not the column's varchar(n): a cast would cut a value that is too
            # long, where the INSERT refuses it.
            selected.append(f"r ->> {at}")
        else:
            selected.append(f"(r ->> {at})::{field.db_type(connection)}")
    return (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(c) for c in columns)}) "
        f"SELECT {', '.join(selected)} FROM jsonb_array_elements(%s::jsonb) AS r "
        f"ON CONFLICT ({', '.join(quote(c) for c in conflict)}) DO UPDATE SET {updates}"
        + (f" RETURNING {returning}" if returning else "")
    )


def execute(sql: str, rows: Iterable[Sequence[Any]], fetch: bool = False) -> list[Any]:
    with connection.cursor() as cursor:
        cursor.execute(sql, [rows_param(rows)])
        return list(cursor.fetchall()) if fetch else []

"""The span's ``data`` without SQLite's ``CHECK (JSON_VALID(data))`` (StoredJSONField).

The check parsed each span's JSON again on every insert, about a fifth of the
cost of storing a span; the store writes ``data`` from orjson, always valid.
PostgreSQL: nothing changes (jsonb has no such check).

SQLite cannot drop a column's CHECK in place: Django copies the table into a new
one (every span: on a large store this migration takes a while, once). The copy
does not take the table's triggers (the search index's, migration 0010) nor its
AUTOINCREMENT high-water mark, so both are put back as they were.
"""

from typing import Any

from django.db import migrations

import tracing.models

# Frozen copy of migration 0010's triggers (a migration never imports app code).
BODY_SQL = """
    coalesce(new.name, '') || ' ' || coalesce(new.status_message, '') || ' ' ||
    CASE WHEN new.kind = 'temporal' THEN '' ELSE
      coalesce((SELECT group_concat(value, ' ') FROM json_tree(new.data, '$.attributes')
                WHERE type = 'text'), '') END || ' ' ||
    coalesce((SELECT group_concat(value, ' ') FROM json_tree(new.data, '$.events')
              WHERE type = 'text'), '')
"""

TRIGGERS = [
    """CREATE TRIGGER IF NOT EXISTS tracing_spantext_delete AFTER DELETE ON tracing_span
        BEGIN DELETE FROM tracing_spantext WHERE rowid = old.id; END""",
    f"""CREATE TRIGGER IF NOT EXISTS tracing_spantext_update
        AFTER UPDATE OF data, name, status_message ON tracing_span
        WHEN EXISTS (SELECT 1 FROM tracing_spantext WHERE rowid = old.id)
        BEGIN
          DELETE FROM tracing_spantext WHERE rowid = old.id;
          INSERT INTO tracing_spantext(rowid, body) SELECT new.id, {BODY_SQL};
        END""",
]

# The span table's AUTOINCREMENT mark between the two steps (the search index
# and the forwarder rely on ids that only grow).
_sequence: list[int] = []


def _remember(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "sqlite":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = 'tracing_span'")
        row = cursor.fetchone()
    _sequence[:] = [row[0]] if row else []


def _restore(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "sqlite":
        return
    with schema_editor.connection.cursor() as cursor:
        for sql in TRIGGERS:
            cursor.execute(sql)
        if _sequence:
            cursor.execute(
                "UPDATE sqlite_sequence SET seq = max(seq, %s) WHERE name = 'tracing_span'",
                [_sequence[0]],
            )
            if not cursor.rowcount:
                cursor.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('tracing_span', %s)",
                    [_sequence[0]],
                )


class Migration(migrations.Migration):
    dependencies = [
        ("tracing", "0012_runs_list_indexes_in_state"),
    ]

    operations = [
        migrations.RunPython(_remember, _restore),
        migrations.AlterField(
            model_name="span",
            name="data",
            field=tracing.models.StoredJSONField(default=dict),
        ),
        migrations.RunPython(_restore, _remember),
    ]

"""Full-text search over what the agents said: an FTS5 index of span text on SQLite.

Filled behind the receiver, not in its transaction (indexing costs about as much
as storing a span): ``tracing.search.index_pending`` indexes the spans stored
since the last one indexed, in the forwarder's maintenance loop and before each
search. Triggers keep it right when spans are deleted (retention) or change.
Other databases search the span rows directly (tracing.search).
"""

from typing import Any

from django.db import migrations

# A span's indexed text, as SQL over the row ``new``: frozen here as it was when
# this migration was written (a migration never imports app code, which moves on);
# tracing.search.BODY_SQL is the live copy, and a test keeps the two equal until a
# later migration replaces the trigger.
BODY_SQL = """
    coalesce(new.name, '') || ' ' || coalesce(new.status_message, '') || ' ' ||
    CASE WHEN new.kind = 'temporal' THEN '' ELSE
      coalesce((SELECT group_concat(value, ' ') FROM json_tree(new.data, '$.attributes')
                WHERE type = 'text'), '') END || ' ' ||
    coalesce((SELECT group_concat(value, ' ') FROM json_tree(new.data, '$.events')
              WHERE type = 'text'), '')
"""

CREATE = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS tracing_spantext USING fts5(body, tokenize='unicode61')",
    """CREATE TRIGGER IF NOT EXISTS tracing_spantext_delete AFTER DELETE ON tracing_span
        BEGIN DELETE FROM tracing_spantext WHERE rowid = old.id; END""",
    # A span already indexed that changes is indexed again; one not indexed yet waits.
    f"""CREATE TRIGGER IF NOT EXISTS tracing_spantext_update
        AFTER UPDATE OF data, name, status_message ON tracing_span
        WHEN EXISTS (SELECT 1 FROM tracing_spantext WHERE rowid = old.id)
        BEGIN
          DELETE FROM tracing_spantext WHERE rowid = old.id;
          INSERT INTO tracing_spantext(rowid, body) SELECT new.id, {BODY_SQL};
        END""",
]
DROP = [
    "DROP TRIGGER IF EXISTS tracing_spantext_delete",
    "DROP TRIGGER IF EXISTS tracing_spantext_update",
    "DROP TABLE IF EXISTS tracing_spantext",
]


def _run(statements: list[str]) -> Any:
    def run(apps: Any, schema_editor: Any) -> None:
        if schema_editor.connection.vendor != "sqlite":
            return
        with schema_editor.connection.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("tracing", "0009_trace_links"),
    ]

    operations = [migrations.RunPython(_run(CREATE), _run(DROP))]

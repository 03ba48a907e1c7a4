"""Full-text search on PostgreSQL: a GIN-indexed tsvector per span (SQLite has FTS5, 0010).

The table is a model (tracing.models.SpanWords) so that Django's flush empties it
with the spans; on SQLite it stays empty.

Filled behind the receiver like SQLite's index (``tracing.search.index_pending``
in the forwarder's maintenance loop and before each search), so ingest does not
pay for it. Rows go with their span (ON DELETE CASCADE: retention), and a trigger
indexes a span again when its text changes. Other databases: nothing here.
"""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

import tracing.models

# A span's indexed text, as SQL over the row ``s``: frozen here as it was when this
# migration was written (migrations never import app code); tracing.search.BODY_PG
# is the live copy, and a test keeps the two equal until a later migration replaces
# the trigger. The same text as SQLite's index: name, status message, the string
# values of the attributes (not for Temporal's own spans: ids) and of the events.
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

CREATE = [
    # The model has no constraint: PostgreSQL deletes a span's words with the span
    # (retention deletes spans in SQL), and Django never looks for them.
    """ALTER TABLE tracing_spanwords ADD CONSTRAINT tracing_spanwords_span
        FOREIGN KEY (span_id) REFERENCES tracing_span (id) ON DELETE CASCADE""",
    "CREATE INDEX IF NOT EXISTS tracing_spanwords_gin ON tracing_spanwords USING gin (words)",
    f"""CREATE OR REPLACE FUNCTION tracing_spanwords_update() RETURNS trigger AS $$
        BEGIN
          UPDATE tracing_spanwords
             SET words = (SELECT to_tsvector('simple', {BODY_PG}) FROM (SELECT NEW.*) AS s)
           WHERE span_id = NEW.id;
          RETURN NULL;
        END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS tracing_spanwords_update ON tracing_span",
    """CREATE TRIGGER tracing_spanwords_update
        AFTER UPDATE OF data, name, status_message ON tracing_span
        FOR EACH ROW EXECUTE FUNCTION tracing_spanwords_update()""",
]
DROP = [
    "DROP TRIGGER IF EXISTS tracing_spanwords_update ON tracing_span",
    "DROP FUNCTION IF EXISTS tracing_spanwords_update()",
    "ALTER TABLE tracing_spanwords DROP CONSTRAINT IF EXISTS tracing_spanwords_span",
]


def _run(statements: list[str]) -> Any:
    def run(apps: Any, schema_editor: Any) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        with schema_editor.connection.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("tracing", "0010_span_text_search"),
    ]

    operations = [
        migrations.CreateModel(
            name="SpanWords",
            fields=[
                (
                    "span",
                    models.OneToOneField(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to="tracing.span",
                    ),
                ),
                ("words", tracing.models.TsVectorField()),
            ],
            options={"db_table": "tracing_spanwords"},
        ),
        migrations.RunPython(_run(CREATE), _run(DROP)),
    ]

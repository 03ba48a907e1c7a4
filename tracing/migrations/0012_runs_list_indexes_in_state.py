"""The runs list's indexes (0002) in the model state, so SQLite keeps them.

0002 created them in plain SQL, outside the models' state. On SQLite, Django
adds a column with a default by building a new table and copying the rows
(0008 did, for trace health): an index the state does not know is not built
again, so from 0008 on SQLite had neither index and every runs list page
sorted the whole summary table. Here they join the state (RunSummary.Meta), so
any later rebuild keeps them, and are created again where they are missing.
PostgreSQL still has them: nothing changes there.
"""

from django.db import migrations, models

INDEXES = {
    "runsummary_list_order": ["-first_span_ns", "-workflow_id", "-run_id"],
    "runsummary_list_type": ["workflow_type", "-first_span_ns", "-workflow_id", "-run_id"],
}


def _columns(fields: list[str]) -> str:
    return ", ".join(f'"{f[1:]}" DESC' if f.startswith("-") else f'"{f}"' for f in fields)


class Migration(migrations.Migration):
    dependencies = [("tracing", "0011_span_text_search_postgres")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddIndex(
                    model_name="runsummary", index=models.Index(fields=fields, name=name)
                )
                for name, fields in INDEXES.items()
            ],
            database_operations=[
                migrations.RunSQL(
                    f'CREATE INDEX IF NOT EXISTS "{name}" ON "tracing_runsummary" '
                    f"({_columns(fields)})",
                    migrations.RunSQL.noop,
                )
                for name, fields in INDEXES.items()
            ],
        )
    ]

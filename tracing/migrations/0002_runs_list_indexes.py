"""Indexes for the runs list (dashboard/runs.py), kept out of the models' Meta.

The runs list pages run summaries newest first by (first span, workflow id,
run id) and filters them by workflow type; without these, each page sorts the
whole table. Plain SQL (valid on SQLite and PostgreSQL) so the tracing models
stay as their owner wrote them.
"""

from django.db import migrations

INDEXES = {
    "runsummary_list_order": "(first_span_ns DESC, workflow_id DESC, run_id DESC)",
    "runsummary_list_type": "(workflow_type, first_span_ns DESC, workflow_id DESC, run_id DESC)",
}


class Migration(migrations.Migration):
    dependencies = [("tracing", "0001_initial")]

    operations = [
        migrations.RunSQL(
            f'CREATE INDEX IF NOT EXISTS "{name}" ON "tracing_runsummary" {columns}',
            f'DROP INDEX IF EXISTS "{name}"',
        )
        for name, columns in INDEXES.items()
    ]

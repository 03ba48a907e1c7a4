"""Retention: old rows go in small batches, new ones stay, ingest goes on meanwhile."""

from __future__ import annotations

import threading
import time
import zlib
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from opentelemetry.trace import Tracer
from pytest_django.fixtures import Settings

from dashboard import maintenance
from dashboard.models import AuditEntry
from tests.tracing.spans import agent_run, protobuf_body, record
from tracing import otlp, retention, store
from tracing.models import ArchivedHistory, Maintenance, RunExport, RunSummary, Span

pytestmark = pytest.mark.django_db(transaction=True)

DAY_NS = 86_400 * 10**9


def rows_for(workflow_id: str, age_days: float, calls: int = 1) -> list[dict[str, Any]]:
    def build(tracer: Tracer) -> None:
        for call in range(calls):
            agent_run(tracer, workflow_id, "run-1", activity_id=str(call + 1))
        # A span no run claims (no Temporal ids, no parent).
        with tracer.start_as_current_span(f"stray {workflow_id}"):
            pass

    rows = otlp.decode(protobuf_body(record(build)), otlp.PROTOBUF).rows
    shift = int(age_days * DAY_NS)
    for row in rows:
        row["start_ns"] -= shift
        row["end_ns"] -= shift
    return rows


def ingest(workflow_id: str, age_days: float, calls: int = 1) -> int:
    rows = rows_for(workflow_id, age_days, calls)
    store.ingest(rows)
    return len(rows)


def archive_for(workflow_id: str) -> None:
    ArchivedHistory.objects.create(
        workflow_id=workflow_id, run_id="run-1", history=zlib.compress(b""), event_count=0
    )


@pytest.fixture
def keep_30_days(settings: Settings) -> Settings:
    settings.LOOMVIEW_RETENTION_DAYS = 30
    settings.LOOMVIEW_AUDIT_RETENTION_DAYS = 0
    return settings


def test_retention_off_deletes_nothing(settings: Settings) -> None:
    settings.LOOMVIEW_RETENTION_DAYS = 0
    ingest("old", 90)
    result = retention.prune()
    assert result.cutoff is None and result.total == 0
    assert Span.objects.filter(workflow_id="old").exists()


def test_old_runs_and_what_hangs_on_them_go_new_ones_stay(keep_30_days: Settings) -> None:
    old_spans = ingest("old", 45, calls=3)
    new_spans = ingest("new", 2, calls=3)
    for workflow_id in ("old", "new"):
        archive_for(workflow_id)
        RunExport.objects.create(workflow_id=workflow_id, run_id="run-1", collector="c")
    finished_old = RunExport.objects.create(
        workflow_id="elsewhere", run_id="r", collector="c", status=RunExport.DONE
    )
    RunExport.objects.filter(pk=finished_old.pk).update(
        updated_at=timezone.now() - timedelta(days=40)
    )
    pending_old = RunExport.objects.create(workflow_id="elsewhere", run_id="r2", collector="c")
    RunExport.objects.filter(pk=pending_old.pk).update(
        updated_at=timezone.now() - timedelta(days=40)
    )

    result = retention.prune(pause=0)

    # The old run is gone whole: its spans (and its stray neighbour), summary, archive, exports.
    assert not Span.objects.filter(workflow_id="old").exists()
    assert not Span.objects.filter(name="stray old").exists()
    assert not RunSummary.objects.filter(workflow_id="old").exists()
    assert not ArchivedHistory.objects.filter(workflow_id="old").exists()
    assert not RunExport.objects.filter(workflow_id="old").exists()
    assert not RunExport.objects.filter(pk=finished_old.pk).exists()
    # Unfinished exports are never aged out.
    assert RunExport.objects.filter(pk=pending_old.pk).exists()
    # The new run is untouched.
    assert Span.objects.filter(workflow_id="new").count() == new_spans - 1
    assert Span.objects.filter(name="stray new").exists()
    assert RunSummary.objects.get(workflow_id="new").span_count == new_spans - 1
    assert ArchivedHistory.objects.filter(workflow_id="new").exists()
    assert result.deleted["spans"] == old_spans
    assert result.deleted["runs"] == 1 and result.deleted["exports"] == 1
    # In batches of at most BATCH rows.
    assert result.batches >= old_spans // retention.BATCH
    # Nothing left to do.
    assert retention.prune(pause=0).total == 0


def test_ingest_goes_on_while_a_large_prune_runs(
    keep_30_days: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH", 50)
    old_rows: list[dict[str, Any]] = []
    for n in range(20):
        old_rows += rows_for(f"old-{n}", 60, calls=5)
    store.ingest(old_rows)
    old_count = Span.objects.count()
    assert old_count > 500

    done = threading.Event()
    outcome: dict[str, Any] = {}

    def prune() -> None:
        try:
            outcome["result"] = retention.prune(pause=0.005)
        finally:
            done.set()
            connection.close()

    pruner = threading.Thread(target=prune)
    ingests: list[float] = []
    pruner.start()
    n = 0
    while not done.is_set():
        started = time.monotonic()
        store.ingest(rows_for(f"fresh-{n}", 0))
        ingests.append(time.monotonic() - started)
        n += 1
    pruner.join()
    result: retention.PruneResult = outcome["result"]

    assert result.deleted["spans"] == old_count
    assert not Span.objects.filter(workflow_id__startswith="old-").exists()
    assert not Span.objects.filter(name__startswith="stray old-").exists()
    # Ingest kept going while the prune ran, batch after batch, and lost nothing.
    assert len(ingests) >= 5, f"only {len(ingests)} ingests during {result.batches} batches"
    assert RunSummary.objects.filter(workflow_id__startswith="fresh-").count() == n
    # The prune went in many small batches, none holding the database for long (a
    # few ms on a quiet machine; the bound leaves room for a loaded CI machine).
    assert result.batches >= 5, result.batches
    assert result.longest_batch < 1.5, result.longest_batch
    assert max(ingests) < 2.0


def test_the_audit_log_has_its_own_retention(settings: Settings) -> None:
    settings.LOOMVIEW_RETENTION_DAYS = 7
    settings.LOOMVIEW_AUDIT_RETENTION_DAYS = 365
    user = User.objects.create_user("ada")
    old = AuditEntry.objects.create(user=user, username="ada", action="signal", outcome="ok")
    older = AuditEntry.objects.create(user=user, username="ada", action="cancel", outcome="ok")
    AuditEntry.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(days=30))
    AuditEntry.objects.filter(pk=older.pk).update(created=timezone.now() - timedelta(days=400))
    result = retention.prune(pause=0)
    # Older than the spans' 7 days but within its own 365: kept.
    assert list(AuditEntry.objects.values_list("pk", flat=True)) == [old.pk]
    assert result.deleted["audit_entries"] == 1


def test_background_job_runs_once_per_interval_and_records_what_it_did(
    keep_30_days: Settings,
) -> None:
    ingest("old", 45)
    first = maintenance.run_retention()
    assert first is not None and first.deleted["runs"] == 1
    # Not due again until the interval has passed, whoever asks.
    assert maintenance.run_retention() is None
    assert maintenance.run_retention(owner="another-process") is None
    row = Maintenance.objects.get(job=maintenance.RETENTION)
    assert row.last_result["runs"] == 1 and row.totals["runs"] == 1
    assert row.last_finished_at is not None and row.lease_owner == ""


def test_prune_command(keep_30_days: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    ingest("old", 45)
    ingest("new", 1)
    call_command("prune")
    out = capsys.readouterr().out
    assert "1 runs" in out and "spans" in out
    assert not RunSummary.objects.filter(workflow_id="old").exists()
    assert RunSummary.objects.filter(workflow_id="new").exists()
    keep_30_days.LOOMVIEW_RETENTION_DAYS = 0
    with pytest.raises(CommandError, match="retention is off"):
        call_command("prune")
    call_command("prune", "--days", "1")
    assert not RunSummary.objects.filter(workflow_id="new").exists()


def test_exports_page_shows_retention_and_the_archive(
    keep_30_days: Settings, admin_client: Any
) -> None:
    page = admin_client.get("/exports/").content.decode()
    assert "Storage" in page and "30 days" in page and "not run yet" in page
    ingest("old", 45)
    ingest("new", 1)
    archive_for("new")
    assert maintenance.run_retention() is not None
    page = admin_client.get("/exports/").content.decode()
    assert "last run" in page and "1 runs" in page
    assert "<strong>1</strong> closed run" in page
    keep_30_days.LOOMVIEW_RETENTION_DAYS = 0
    assert "off: nothing is deleted" in admin_client.get("/exports/").content.decode()

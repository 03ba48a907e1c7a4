"""`python manage.py prune`: run retention now (what the background worker does on its own)."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard import maintenance


class Command(BaseCommand):
    help = (
        "Delete spans, runs, archived histories, rollups and finished exports older than "
        "LOOMVIEW_RETENTION_DAYS, and audit entries older than LOOMVIEW_AUDIT_RETENTION_DAYS."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, help="override LOOMVIEW_RETENTION_DAYS")
        parser.add_argument("--audit-days", type=int, help="override LOOMVIEW_AUDIT_RETENTION_DAYS")

    def handle(self, *args: Any, **options: Any) -> None:
        for option, setting in (
            ("days", "LOOMVIEW_RETENTION_DAYS"),
            ("audit_days", "LOOMVIEW_AUDIT_RETENTION_DAYS"),
        ):
            if options[option] is not None:
                if options[option] < 1:
                    raise CommandError(f"--{option.replace('_', '-')} must be at least 1")
                setattr(settings, setting, options[option])
        if not maintenance.retention_enabled():
            raise CommandError(
                "retention is off: set LOOMVIEW_RETENTION_DAYS / LOOMVIEW_AUDIT_RETENTION_DAYS "
                "or pass --days / --audit-days"
            )
        result = maintenance.run_retention(force=True)
        if result is None:
            raise CommandError("another process is pruning right now; try again later")
        deleted = ", ".join(f"{n} {label}" for label, n in sorted(result.deleted.items()))
        self.stdout.write(
            f"deleted {deleted or 'nothing'} in {result.batches} batch(es); "
            f"longest batch {result.longest_batch * 1000:.1f} ms"
        )

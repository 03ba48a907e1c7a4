"""Recount the overview's rollups from the span table (after an upgrade, a restore,
a price change, or ingest with LOOMVIEW_ROLLUPS=off), and fetch every run's status
from Temporal unless --no-statuses."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from dashboard import overview, temporal
from tracing import rollups


class Command(BaseCommand):
    help = "Rebuild the fleet overview's rollups from the stored spans."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-statuses",
            action="store_true",
            help="keep the run statuses already recorded; do not ask Temporal",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        began = time.monotonic()
        runs = rollups.rebuild()
        self.stdout.write(f"rollups rebuilt: {runs} runs in {time.monotonic() - began:.1f} s")
        if options["no_statuses"]:
            return
        try:
            changed = asyncio.run(overview.sync_all_statuses())
        except (temporal.TemporalUnavailable, ValueError) as exc:
            self.stderr.write(f"statuses not updated: {exc}")
            return
        self.stdout.write(f"statuses from Temporal: {changed} runs changed")

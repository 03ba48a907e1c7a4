"""Recount the overview's rollups from the span table (after an upgrade, a restore,
a price change, or ingest with LOOMVIEW_ROLLUPS=off)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand

from tracing import rollups


class Command(BaseCommand):
    help = "Rebuild the fleet overview's rollups from the stored spans."

    def handle(self, *args: Any, **options: Any) -> None:
        began = time.monotonic()
        runs = rollups.rebuild()
        self.stdout.write(f"rollups rebuilt: {runs} runs in {time.monotonic() - began:.1f} s")

"""The `ready` process of `make run`: wait for health, seed demo runs, announce URLs.

It keeps running afterwards because honcho stops the whole stack as soon as
any one process exits.
"""

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard import temporal
from dashboard.management.commands.ensure_admin import ADMIN_USERNAME, admin_password_hint

POLL_INTERVAL_SECONDS = 0.5


def dashboard_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def temporal_healthy() -> bool:
    try:
        asyncio.run(temporal.check_connection())
    except temporal.TemporalUnavailable:
        return False
    return True


class Command(BaseCommand):
    help = "Internal step of runstack: wait for the stack, seed demo runs, print the URLs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dashboard-url", required=True)
        parser.add_argument("--temporal-ui-url", required=True)
        parser.add_argument("--seed-module", default="worker.seed")
        parser.add_argument("--timeout", type=float, default=90.0)

    def handle(self, *args: Any, **options: Any) -> None:
        dashboard_url: str = options["dashboard_url"]
        address, namespace = temporal.target()
        deadline = time.monotonic() + options["timeout"]

        self._wait_for(f"Temporal at {address}", temporal_healthy, deadline)
        self._wait_for(
            f"the dashboard at {dashboard_url}", lambda: dashboard_healthy(dashboard_url), deadline
        )

        self.stdout.write(f"Seeding demo runs ({options['seed_module']}) ...")
        seeded = subprocess.run([sys.executable, "-m", options["seed_module"]], check=False)
        if seeded.returncode != 0:
            self.stdout.write(
                self.style.WARNING(
                    f"Seeding failed (exit {seeded.returncode}); the stack keeps running."
                )
            )

        rule = "=" * 64
        self.stdout.write(
            self.style.SUCCESS(
                f"{rule}\n"
                f"  Loomview is ready\n"
                f"  Dashboard    {dashboard_url}\n"
                f"  Temporal UI  {options['temporal_ui_url']}\n"
                f"  Temporal     {address} (namespace {namespace})\n"
                f"  Sign in as   {ADMIN_USERNAME}; {admin_password_hint()}\n"
                f"  Stop with Ctrl-C\n"
                f"{rule}"
            )
        )
        while True:
            time.sleep(3600)

    def _wait_for(self, what: str, check: Any, deadline: float) -> None:
        self.stdout.write(f"Waiting for {what} ...")
        while not check():
            if time.monotonic() > deadline:
                raise CommandError(f"Gave up waiting for {what}.")
            time.sleep(POLL_INTERVAL_SECONDS)

"""`make run`: the whole embedded stack in one terminal.

Migrates, bootstraps the admin user, then runs the Temporal dev server, the
bundled worker, the dashboard (daphne), the span forwarder and a readiness step under honcho, which
prefixes every line with its process name and stops all of them when one
exits or on Ctrl-C / SIGTERM.
"""

import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from honcho.manager import Manager
from honcho.printer import Printer

from dashboard.env import envint, envstr

TCP_PROBE_TIMEOUT_SECONDS = 1.0


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise CommandError(f"Temporal address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=TCP_PROBE_TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class Command(BaseCommand):
    help = "Run Temporal, the worker and the dashboard together (what `make run` does)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--worker-module",
            default="worker",
            help="Python package run as the worker; its .seed module seeds demo runs.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host = envstr("LOOMVIEW_HOST", "127.0.0.1")
        port = envint("LOOMVIEW_PORT", 8000, minimum=1, maximum=65535)
        temporal_port = envint("LOOMVIEW_TEMPORAL_PORT", 7233, minimum=1, maximum=65535)
        ui_port = envint("LOOMVIEW_TEMPORAL_UI_PORT", 8233, minimum=1, maximum=65535)
        worker_module: str = options["worker_module"]
        python = sys.executable
        bin_dir = Path(python).parent
        data_dir = Path(settings.LOOMVIEW_DATA_DIR)
        base_dir = Path(settings.BASE_DIR)

        if not port_is_free(host, port):
            raise CommandError(
                f"{host}:{port} is already in use; stop whatever listens there "
                "or choose another port with LOOMVIEW_PORT."
            )

        call_command("migrate", interactive=False, verbosity=1)
        call_command("ensure_admin")

        env = os.environ.copy()
        env["PYTHONUNBUFFERED"] = "1"
        # Console scripts (daphne) do not put the project on sys.path by themselves.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(base_dir), env.get("PYTHONPATH")]))
        # The worker exports its spans to this dashboard's OTLP receiver.
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        env.setdefault("LOOMVIEW_OTLP_ENDPOINT", f"http://{connect_host}:{port}/v1/traces")

        manager = Manager(Printer(sys.stdout))
        configured = os.environ.get("TEMPORAL_ADDRESS", "").strip()
        embedded = f"127.0.0.1:{temporal_port}"
        ui_url = settings.LOOMVIEW_TEMPORAL_UI_URL
        if configured and accepts_connections(*split_address(configured)):
            address = configured
            self.stdout.write(f"Using the Temporal server at {address} (TEMPORAL_ADDRESS).")
        elif accepts_connections("127.0.0.1", temporal_port):
            # Most likely a dev server left running from an earlier session.
            address = embedded
            self.stdout.write(f"A Temporal server already listens on {address}; using it.")
        else:
            if configured:
                self.stdout.write(
                    self.style.WARNING(
                        f"TEMPORAL_ADDRESS={configured} is not reachable; "
                        f"starting the embedded dev server on {embedded} instead."
                    )
                )
            address = embedded
            if "LOOMVIEW_TEMPORAL_UI_URL" not in os.environ:
                ui_url = f"http://127.0.0.1:{ui_port}"
            namespaces = dict.fromkeys(["default", env.get("TEMPORAL_NAMESPACE") or "default"])
            temporal_cmd = [
                str(bin_dir / "temporal"),
                "server",
                "start-dev",
                "--db-filename",
                str(data_dir / "temporal.db"),
                "--ip",
                "127.0.0.1",
                "--port",
                str(temporal_port),
                "--ui-port",
                str(ui_port),
                "--ui-disable-news-fetch",
                "--log-level",
                "warn",
            ]
            for namespace in namespaces:
                temporal_cmd += ["--namespace", namespace]
            manager.add_process("temporal", shlex.join(temporal_cmd), env=env, cwd=str(base_dir))

        env["TEMPORAL_ADDRESS"] = address
        env["LOOMVIEW_TEMPORAL_UI_URL"] = ui_url
        dashboard_url = f"http://{url_host(host)}:{port}"

        manager.add_process(
            "worker", shlex.join([python, "-m", worker_module]), env=env, cwd=str(base_dir)
        )
        manager.add_process(
            "dashboard",
            shlex.join(
                [python, "-m", "daphne", "-b", host, "-p", str(port), "dashboard.asgi:application"]
            ),
            env=env,
            cwd=str(base_dir),
        )
        # Forwards stored spans to LOOMVIEW_EXPORTERS (tracing.forwarder); idle without any.
        manager.add_process(
            "forwarder",
            shlex.join([python, str(base_dir / "manage.py"), "runforwarder"]),
            env=env,
            cwd=str(base_dir),
        )
        manager.add_process(
            "ready",
            shlex.join(
                [
                    python,
                    str(base_dir / "manage.py"),
                    "stackready",
                    "--dashboard-url",
                    dashboard_url,
                    "--temporal-ui-url",
                    ui_url,
                    "--seed-module",
                    f"{worker_module}.seed",
                ]
            ),
            env=env,
            cwd=str(base_dir),
        )
        manager.loop()
        sys.exit(manager.returncode)

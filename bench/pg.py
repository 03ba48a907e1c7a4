"""PostgreSQL for the benchmarks: a fresh server, loaded from a SQLite bench database.

The pages benchmarks run the same data on both backends: ``bench/generate.py``
writes the SQLite database, ``load_from_sqlite`` copies its span and run tables
into a migrated PostgreSQL database with COPY, indexes every span for search
(as the dashboard's maintenance loop would behind the receiver), then VACUUM
ANALYZE (what autovacuum does after a bulk load).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402

TABLES = ("tracing_runsummary", "tracing_span")


def start() -> servers.Server:
    """A PostgreSQL server with its default durability (fsync, synchronous commit)."""
    return servers.start_postgres(durable=True)


def dsn(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


def migrate(url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, cwd=ROOT, check=True
    )


def load_from_sqlite(sqlite_path: Path, url: str, tables: tuple[str, ...] = TABLES) -> None:
    import psycopg

    began = time.monotonic()
    migrate(url)
    source = sqlite3.connect(sqlite_path)
    with psycopg.connect(dsn(url)) as target:
        for table in tables:
            info = source.execute(f"PRAGMA table_info({table})").fetchall()
            columns = [row[1] for row in info]
            booleans = {i for i, row in enumerate(info) if row[2].lower() == "bool"}
            names = ", ".join(f'"{c}"' for c in columns)
            with (
                target.cursor() as cursor,
                cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy,
            ):
                for values in source.execute(f"SELECT {names} FROM {table}"):
                    if booleans:
                        values = tuple(
                            bool(v) if i in booleans and v is not None else v
                            for i, v in enumerate(values)
                        )
                    copy.write_row(values)
            target.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"
            )
        target.commit()
        if "tracing_span" in tables:
            from generate import index_search

            index_search(url)
        target.autocommit = True
        target.execute("VACUUM ANALYZE")
    source.close()
    print(f"loaded {sqlite_path.name} into PostgreSQL in {time.monotonic() - began:.0f} s")

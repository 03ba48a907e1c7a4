"""``python -m worker``: run the bundled Loomview worker until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys

from worker.config import ConfigError, WorkerConfig
from worker.main import run_worker


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = WorkerConfig.from_env()
        asyncio.run(run_worker(config))
    except ConfigError as error:
        print(f"worker: {error}", file=sys.stderr)
        return 2
    return 0


def exit_now(code: int) -> None:
    """Leave without interpreter finalization, after what it would have done.

    The atexit hooks run (the Agents SDK flushes its trace exporter there) and the
    streams are flushed; then the process ends. Finalizing the interpreter instead
    let a native thread of the Temporal or gRPC runtime release the GIL after
    Python had torn down its thread states, and about one stop in thirty ended in
    "Fatal Python error: PyGILState_Release" and SIGABRT after a clean shutdown.
    """
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())

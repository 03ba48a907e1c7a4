"""``python -m worker``: run the bundled Loomview worker until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
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


if __name__ == "__main__":
    sys.exit(main())

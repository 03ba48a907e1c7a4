"""Build and run the bundled worker."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

from temporalio.client import Client
from temporalio.envconfig import ClientConfig
from temporalio.openai_agents import OpenAIAgentsPlugin
from temporalio.worker import Worker

from telemetry.otel import configure_tracing, disable_tracing
from worker.config import WorkerConfig
from worker.model_calls import ModelCallNumbering
from worker.providers import build_provider
from worker.tools import check_service_status
from worker.workflows import WORKFLOWS

logger = logging.getLogger("loomview.worker")


def build_plugin(config: WorkerConfig) -> OpenAIAgentsPlugin:
    return OpenAIAgentsPlugin(
        model_params=config.model_params(), model_provider=build_provider(config)
    )


async def connect(config: WorkerConfig, plugins: Sequence[Any] = ()) -> Client:
    """Connect with Temporal's own env config (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, ...).

    Extra ``plugins`` (tracing) come before the agents plugin, so their interceptors
    wrap it and Temporal's OTel context is still current when agent spans end.
    """
    connect_config = ClientConfig.load_client_connect_config()
    connect_config.setdefault("target_host", "localhost:7233")
    return await Client.connect(**connect_config, plugins=[*plugins, build_plugin(config)])


def build_workers(client: Client, config: WorkerConfig) -> list[Worker]:
    """The workflow worker and, with a separate model task queue, the model worker."""
    # Fault specs and the dashboard count model calls, not activities.
    extra: dict[str, Any] = {"interceptors": [ModelCallNumbering()]}
    if config.max_cached_workflows is not None:
        extra["max_cached_workflows"] = config.max_cached_workflows
    workers: list[Worker] = []
    separate_models = bool(config.model_task_queue) and config.model_task_queue != config.task_queue
    if config.role in ("all", "workflows") or not separate_models:
        workers.append(
            Worker(
                client,
                task_queue=config.task_queue,
                workflows=WORKFLOWS,
                activities=[check_service_status],
                **extra,
            )
        )
    if separate_models and config.role in ("all", "models"):
        assert config.model_task_queue is not None
        # The plugin adds the model activities to every worker; this one runs only those.
        workers.append(Worker(client, task_queue=config.model_task_queue, activities=[]))
    return workers


async def run_worker(config: WorkerConfig) -> None:
    if config.tracing:
        tracing = configure_tracing(openai_traces=config.openai_traces)
    else:
        tracing = None
        disable_tracing()
        if config.openai_traces:
            logger.info("LOOMVIEW_TRACING=off: OpenAI traces are off too, nothing is sent")
    try:
        await _serve(config, tracing.plugins if tracing else [])
    finally:
        if tracing is not None:
            tracing.shutdown()


async def _serve(config: WorkerConfig, plugins: Sequence[Any]) -> None:
    client = await connect(config, plugins)
    workers = build_workers(client, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logger.info(
        "worker up: namespace=%s task_queue=%s model_task_queue=%s provider=%s",
        client.namespace,
        config.task_queue,
        config.model_task_queue or config.task_queue,
        config.provider,
    )
    runs = [asyncio.create_task(worker.run()) for worker in workers]
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*runs, stopped], return_when=asyncio.FIRST_COMPLETED)
    for worker in workers:
        await worker.shutdown()
    for task in runs:
        if task in done and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    logger.info("worker stopped")

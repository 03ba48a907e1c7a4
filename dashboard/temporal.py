"""The dashboard's only door to Temporal.

Connection settings come from Temporal's own environment configuration
(`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, TLS variables,
`TEMPORAL_PROFILE` and the TOML config file), so the dashboard, the worker and
the `temporal` CLI all agree on where the server is.
"""

import asyncio
import logging
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.envconfig import ClientConfig, ClientConnectConfig
from temporalio.service import RPCError, RPCStatusCode

logger = logging.getLogger(__name__)

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"
CONNECT_TIMEOUT = timedelta(seconds=2)
RPC_TIMEOUT = timedelta(seconds=5)
RECENT_RUNS_LIMIT = 50


class TemporalUnavailable(Exception):
    """Temporal could not be reached or refused the request."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"Temporal is unreachable at {address}: {reason}")
        self.address = address
        self.reason = reason


@dataclass(frozen=True)
class RunSummary:
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    start_time: datetime
    close_time: datetime | None

    @property
    def status_label(self) -> str:
        return self.status.replace("_", " ").capitalize()


def connect_config() -> ClientConnectConfig:
    """Temporal's env config with the SDK's documented local defaults filled in."""
    config = ClientConfig.load_client_connect_config()
    config.setdefault("target_host", DEFAULT_ADDRESS)
    config.setdefault("namespace", DEFAULT_NAMESPACE)
    return config


def target() -> tuple[str, str]:
    """(address, namespace) the dashboard talks to, for messages and deep links."""
    config = connect_config()
    return config["target_host"], config["namespace"]


# A Client is tied to the event loop it was created on; daphne runs one loop
# per process, tests and management commands may run several.
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], Client]]"
_clients = weakref.WeakKeyDictionary()


async def get_client() -> Client:
    config = connect_config()
    key = (config["target_host"], config["namespace"])
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    client = per_loop.get(key)
    if client is not None:
        return client
    try:
        client = await asyncio.wait_for(
            Client.connect(**config), timeout=CONNECT_TIMEOUT.total_seconds()
        )
    except TimeoutError:
        raise TemporalUnavailable(key[0], "connection timed out") from None
    except (RuntimeError, RPCError) as exc:
        # The SDK reports transport failures as RuntimeError from its core.
        raise TemporalUnavailable(key[0], str(exc)) from exc
    per_loop[key] = client
    return client


def _summary(execution: WorkflowExecution) -> RunSummary:
    status = execution.status or WorkflowExecutionStatus.RUNNING
    return RunSummary(
        workflow_id=execution.id,
        run_id=execution.run_id,
        workflow_type=execution.workflow_type,
        status=status.name,
        start_time=execution.start_time,
        close_time=execution.close_time,
    )


async def list_recent_runs(limit: int = RECENT_RUNS_LIMIT) -> list[RunSummary]:
    """The newest workflow executions from visibility, newest first."""
    client = await get_client()
    runs: list[RunSummary] = []
    try:
        async for execution in client.list_workflows(
            limit=limit, page_size=limit, rpc_timeout=RPC_TIMEOUT
        ):
            runs.append(_summary(execution))
    except RPCError as exc:
        # A dead connection surfaces here once the cached client loses its server.
        _forget(client)
        raise TemporalUnavailable(client.service_client.config.target_host, exc.message) from exc
    return runs


async def list_runs(query: str, limit: int) -> list[RunSummary]:
    """At most `limit` executions matching a visibility query, in the server's order.

    One page only: the runs list asks for what it shows, never the whole namespace.
    """
    client = await get_client()
    runs: list[RunSummary] = []
    try:
        async for execution in client.list_workflows(
            query or None, limit=limit, page_size=limit, rpc_timeout=RPC_TIMEOUT
        ):
            runs.append(_summary(execution))
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise ValueError(f"visibility query rejected: {exc.message}") from exc
        _forget(client)
        raise TemporalUnavailable(client.service_client.config.target_host, exc.message) from exc
    return runs


def quote(value: str) -> str:
    """A string literal for a visibility query."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _forget(client: Client) -> None:
    for per_loop in _clients.values():
        for key, cached in list(per_loop.items()):
            if cached is client:
                del per_loop[key]


async def check_connection() -> None:
    """Raise TemporalUnavailable unless the configured server answers."""
    await get_client()


class RunNotFound(Exception):
    """Temporal has no execution with this workflow id and run id."""


@dataclass(frozen=True)
class RunHistory:
    workflow_id: str
    run_id: str
    # Temporal's own protobuf; json_format.MessageToDict gives its proto JSON.
    history: History

    @property
    def closed(self) -> bool:
        events = self.history.events
        return bool(events) and events[-1].event_type in CLOSE_EVENT_TYPES


CLOSE_EVENT_TYPES = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    }
)


async def fetch_history(workflow_id: str, run_id: str) -> RunHistory:
    """Every event of one run; RunNotFound if Temporal has no such run."""
    client = await get_client()
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        history = await handle.fetch_history(rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise RunNotFound(f"{workflow_id} / {run_id}") from exc
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            # A malformed run id (not a UUID) cannot name a run.
            raise RunNotFound(f"{workflow_id} / {run_id}") from exc
        _forget(client)
        raise TemporalUnavailable(client.service_client.config.target_host, exc.message) from exc
    return RunHistory(workflow_id, run_id, History(events=history.events))

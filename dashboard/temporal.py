"""The dashboard's only door to Temporal.

Connection settings come from Temporal's own environment configuration
(`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, TLS variables,
`TEMPORAL_PROFILE` and the TOML config file), so the dashboard, the worker and
the `temporal` CLI all agree on where the server is.
"""

import asyncio
import logging
import re
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.history.v1 import History, HistoryEvent
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.envconfig import ClientConfig, ClientConnectConfig
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from telemetry import vocab

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
class VisibilityRun:
    """One execution as Temporal's visibility lists it (not tracing.models.RunSummary: no spans)."""

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


def _visibility_run(execution: WorkflowExecution) -> VisibilityRun:
    status = execution.status or WorkflowExecutionStatus.RUNNING
    return VisibilityRun(
        workflow_id=execution.id,
        run_id=execution.run_id,
        workflow_type=execution.workflow_type,
        status=status.name,
        start_time=execution.start_time,
        close_time=execution.close_time,
    )


async def list_recent_runs(limit: int = RECENT_RUNS_LIMIT) -> list[VisibilityRun]:
    """The newest workflow executions from visibility, newest first."""
    client = await get_client()
    runs: list[VisibilityRun] = []
    try:
        async for execution in client.list_workflows(
            limit=limit, page_size=limit, rpc_timeout=RPC_TIMEOUT
        ):
            runs.append(_visibility_run(execution))
    except RPCError as exc:
        # A dead connection surfaces here once the cached client loses its server.
        _forget(client)
        raise TemporalUnavailable(client.service_client.config.target_host, exc.message) from exc
    return runs


async def list_runs(query: str, limit: int) -> list[VisibilityRun]:
    """At most `limit` executions matching a visibility query, in the server's order.

    One page only: the runs list asks for what it shows, never the whole namespace.
    """
    client = await get_client()
    runs: list[VisibilityRun] = []
    try:
        async for execution in client.list_workflows(
            query or None, limit=limit, page_size=limit, rpc_timeout=RPC_TIMEOUT
        ):
            runs.append(_visibility_run(execution))
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise ValueError(f"visibility query rejected: {exc.message}") from exc
        _forget(client)
        raise TemporalUnavailable(client.service_client.config.target_host, exc.message) from exc
    return runs


async def all_runs(query: str, page_size: int = 1000) -> list[VisibilityRun]:
    """Every execution matching a visibility query, all pages (for backfills, not pages)."""
    client = await get_client()
    runs: list[VisibilityRun] = []
    try:
        async for execution in client.list_workflows(
            query or None, page_size=page_size, rpc_timeout=RPC_TIMEOUT
        ):
            runs.append(_visibility_run(execution))
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise ValueError(f"visibility query rejected: {exc.message}") from exc
        _forget(client)
        raise TemporalUnavailable(client.service_client.config.target_host, exc.message) from exc
    return runs


def quote(value: str) -> str:
    """A string literal for a visibility query, escaped as Temporal's query parser reads it.

    (The dev server's SQLite visibility then fails to match an id holding a
    backslash; other visibility stores do not.)
    """
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
        return bool(events) and events[-1].event_type in vocab.WORKFLOW_CLOSE_EVENT_TYPES


def _read_failed(client: Client, exc: RPCError, workflow_id: str, run_id: str) -> Exception:
    """RunNotFound for a run Temporal does not know, else TemporalUnavailable."""
    # A malformed run id (not a UUID) cannot name a run either.
    if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
        return RunNotFound(f"{workflow_id} / {run_id}")
    _forget(client)
    return TemporalUnavailable(client.service_client.config.target_host, exc.message)


@asynccontextmanager
async def _reading(workflow_id: str, run_id: str) -> AsyncIterator[WorkflowHandle]:
    """The run's handle; RPC errors become RunNotFound or TemporalUnavailable."""
    client = await get_client()
    try:
        yield client.get_workflow_handle(workflow_id, run_id=run_id)
    except RPCError as exc:
        raise _read_failed(client, exc, workflow_id, run_id) from exc


async def fetch_history(workflow_id: str, run_id: str) -> RunHistory:
    """Every event of one run; RunNotFound if Temporal has no such run."""
    async with _reading(workflow_id, run_id) as handle:
        history = await handle.fetch_history(rpc_timeout=RPC_TIMEOUT)
    return RunHistory(workflow_id, run_id, History(events=history.events))


async def fetch_edges(workflow_id: str, run_id: str) -> tuple[HistoryEvent, HistoryEvent | None]:
    """A run's first event and, once it has closed, its close event: two one-event
    pages, for following a chain of runs without reading whole histories."""
    from temporalio.api.common.v1 import WorkflowExecution as ExecutionRef
    from temporalio.api.workflowservice.v1 import (
        GetWorkflowExecutionHistoryRequest,
        GetWorkflowExecutionHistoryReverseRequest,
    )

    client = await get_client()
    execution = ExecutionRef(workflow_id=workflow_id, run_id=run_id)
    service = client.workflow_service
    try:
        first = await service.get_workflow_execution_history(
            GetWorkflowExecutionHistoryRequest(
                namespace=client.namespace, execution=execution, maximum_page_size=1
            ),
            timeout=RPC_TIMEOUT,
        )
        last = await service.get_workflow_execution_history_reverse(
            GetWorkflowExecutionHistoryReverseRequest(
                namespace=client.namespace, execution=execution, maximum_page_size=1
            ),
            timeout=RPC_TIMEOUT,
        )
    except RPCError as exc:
        raise _read_failed(client, exc, workflow_id, run_id) from exc
    if not first.history.events:
        raise RunNotFound(f"{workflow_id} / {run_id}")
    close = last.history.events[0] if last.history.events else None
    if close is not None and close.event_type not in vocab.WORKFLOW_CLOSE_EVENT_TYPES:
        close = None
    return first.history.events[0], close


@dataclass(frozen=True)
class RunState:
    history_length: int
    is_open: bool


async def run_state(workflow_id: str, run_id: str) -> RunState:
    """How long a run's history is and whether it is open: one small RPC, no events."""
    async with _reading(workflow_id, run_id) as handle:
        description = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    return RunState(
        description.history_length, description.status == WorkflowExecutionStatus.RUNNING
    )


# Acting on runs. Every call below carries the acting user's identity, so
# Temporal's own history says who signalled, reset or stopped a run.

ACTION_TIMEOUT = timedelta(seconds=5)
# A query or update is answered by a worker; none polling should not hang a page.
WORKER_ANSWER_TIMEOUT = timedelta(seconds=4)
UPDATE_TIMEOUT = timedelta(seconds=30)
INTERNAL_PREFIX = "__"


class ActionFailed(Exception):
    """Temporal (or the workflow) refused an action; the message is for the user."""


def identity_for(username: str) -> str:
    return f"loomview:{username}"


async def get_client_as(identity: str) -> Client:
    """A client whose requests carry `identity`; one per identity, cached like get_client."""
    config = connect_config()
    key = (config["target_host"], config["namespace"], identity)
    per_loop = _identity_clients.setdefault(asyncio.get_running_loop(), {})
    client = per_loop.get(key)
    if client is not None:
        return client
    try:
        client = await asyncio.wait_for(
            Client.connect(**config, identity=identity), timeout=CONNECT_TIMEOUT.total_seconds()
        )
    except TimeoutError:
        raise TemporalUnavailable(key[0], "connection timed out") from None
    except (RuntimeError, RPCError) as exc:
        raise TemporalUnavailable(key[0], str(exc)) from exc
    per_loop[key] = client
    return client


_identity_clients: (
    "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, str], Client]]"
)
_identity_clients = weakref.WeakKeyDictionary()


def _failed(client: Client, exc: RPCError) -> Exception:
    """The user-facing exception for an RPC error; forgets a client whose server is gone."""
    if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.UNKNOWN):
        for per_loop in _identity_clients.values():
            for key, cached in list(per_loop.items()):
                if cached is client:
                    del per_loop[key]
        return TemporalUnavailable(client.service_client.config.target_host, exc.message)
    if exc.status == RPCStatusCode.DEADLINE_EXCEEDED:
        return ActionFailed("Temporal did not answer in time (is a worker polling the task queue?)")
    if exc.status == RPCStatusCode.NOT_FOUND:
        return ActionFailed(f"the run is not open or does not exist: {exc.message}")
    return ActionFailed(exc.message or exc.status.name)


@dataclass(frozen=True)
class Definitions:
    """The handlers a workflow declares, from its `__temporal_workflow_metadata` query."""

    signals: list[str]
    queries: list[str]
    updates: list[str]


async def workflow_definitions(workflow_id: str, run_id: str) -> Definitions | None:
    """What the workflow accepts, or None if no worker answered the metadata query."""
    from temporalio.api.sdk.v1 import WorkflowMetadata

    client = await get_client()
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        metadata = await handle.query(
            "__temporal_workflow_metadata",
            result_type=WorkflowMetadata,
            rpc_timeout=WORKER_ANSWER_TIMEOUT,
        )
    except (RPCError, WorkflowQueryFailedError) as exc:
        logger.info("no workflow metadata for %s / %s: %s", workflow_id, run_id, exc)
        return None
    definition = metadata.definition

    def public(names: list[str]) -> list[str]:
        return sorted(name for name in names if name and not name.startswith(INTERNAL_PREFIX))

    return Definitions(
        signals=public([d.name for d in definition.signal_definitions]),
        queries=public([d.name for d in definition.query_definitions]),
        updates=public([d.name for d in definition.update_definitions]),
    )


def _args(payload: Any) -> list[Any]:
    return [] if payload is None else [payload]


@asynccontextmanager
async def _acting(identity: str, workflow_id: str, run_id: str) -> AsyncIterator[WorkflowHandle]:
    """The run's handle on a client that carries ``identity``; RPC errors become the
    user-facing ActionFailed / TemporalUnavailable."""
    client = await get_client_as(identity)
    try:
        yield client.get_workflow_handle(workflow_id, run_id=run_id)
    except RPCError as exc:
        raise _failed(client, exc) from exc


async def send_signal(
    identity: str, workflow_id: str, run_id: str, name: str, payload: Any
) -> None:
    async with _acting(identity, workflow_id, run_id) as handle:
        await handle.signal(name, args=_args(payload), rpc_timeout=ACTION_TIMEOUT)


async def run_query(identity: str, workflow_id: str, run_id: str, name: str, payload: Any) -> Any:
    async with _acting(identity, workflow_id, run_id) as handle:
        try:
            return await handle.query(name, args=_args(payload), rpc_timeout=WORKER_ANSWER_TIMEOUT)
        except WorkflowQueryFailedError as exc:
            raise ActionFailed(f"the query failed: {exc.message}") from exc


async def run_update(identity: str, workflow_id: str, run_id: str, name: str, payload: Any) -> Any:
    async with _acting(identity, workflow_id, run_id) as handle:
        try:
            return await handle.execute_update(
                name, args=_args(payload), rpc_timeout=UPDATE_TIMEOUT
            )
        except WorkflowUpdateFailedError as exc:
            message = getattr(exc.cause, "message", None) or str(exc.cause)
            raise ActionFailed(f"the workflow rejected the update: {message}") from exc
        except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
            raise ActionFailed("the update did not complete in time") from exc


async def cancel_run(identity: str, workflow_id: str, run_id: str, reason: str) -> None:
    async with _acting(identity, workflow_id, run_id) as handle:
        await handle.cancel(reason=reason, rpc_timeout=ACTION_TIMEOUT)


async def terminate_run(identity: str, workflow_id: str, run_id: str, reason: str) -> None:
    async with _acting(identity, workflow_id, run_id) as handle:
        await handle.terminate(reason=reason, rpc_timeout=ACTION_TIMEOUT)


async def reset_run(
    identity: str, workflow_id: str, run_id: str, workflow_task_finish_event_id: int, reason: str
) -> str:
    """Reset the run to a workflow task; returns the new run's id."""
    from temporalio.api.common.v1 import WorkflowExecution as ExecutionRef
    from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest

    client = await get_client_as(identity)
    request = ResetWorkflowExecutionRequest(
        namespace=client.namespace,
        workflow_execution=ExecutionRef(workflow_id=workflow_id, run_id=run_id),
        reason=reason,
        workflow_task_finish_event_id=workflow_task_finish_event_id,
        request_id=str(uuid.uuid4()),
        identity=identity,
    )
    try:
        response = await client.workflow_service.reset_workflow_execution(
            request, retry=True, timeout=ACTION_TIMEOUT
        )
    except RPCError as exc:
        raise _failed(client, exc) from exc
    return response.run_id


async def _start(
    identity: str,
    workflow_type: str,
    args: list[Any],
    workflow_id: str,
    task_queue: str,
    **options: Any,
) -> WorkflowHandle[Any, Any]:
    client = await get_client_as(identity)
    try:
        return await client.start_workflow(
            workflow_type, args=args, id=workflow_id, task_queue=task_queue,
            rpc_timeout=ACTION_TIMEOUT, **options,
        )  # fmt: skip
    except WorkflowAlreadyStartedError as exc:
        raise ActionFailed(f"a run with workflow id {workflow_id!r} is already open") from exc
    except RPCError as exc:
        raise _failed(client, exc) from exc


async def start_run(
    identity: str,
    workflow_type: str,
    args: list[Any],
    workflow_id: str,
    task_queue: str,
    execution_timeout: timedelta | None = None,
) -> str:
    """Start a workflow; `args` may hold RawValue payloads to pass through as they are."""
    handle = await _start(
        identity, workflow_type, args, workflow_id, task_queue,
        execution_timeout=execution_timeout,
    )  # fmt: skip
    return handle.first_execution_run_id or handle.result_run_id or ""


async def signal_with_start(
    identity: str,
    workflow_type: str,
    args: list[Any],
    workflow_id: str,
    task_queue: str,
    signal: str,
    signal_args: list[Any],
) -> tuple[str, bool]:
    """Signal the open run of ``workflow_id``, or start one with this signal first.

    Returns (run id, whether a new run was started): Temporal answers with the
    run that got the signal, an open one when there is one.
    """
    handle = await _start(
        identity, workflow_type, args, workflow_id, task_queue,
        start_signal=signal, start_signal_args=signal_args,
    )  # fmt: skip
    # The SDK keeps the service's answer, which says whether a run was started.
    response = getattr(handle, "_start_workflow_response", None)
    started = bool(getattr(response, "started", True))
    return handle.result_run_id or handle.first_execution_run_id or "", started


@dataclass(frozen=True)
class PendingActivity:
    activity_id: str
    activity_type: str
    state: str
    attempt: int
    maximum_attempts: int
    last_failure: str
    scheduled: datetime | None
    last_started: datetime | None
    next_attempt: datetime | None


@dataclass(frozen=True)
class RunNow:
    """What an open run is doing right now."""

    status: str
    pending: list[PendingActivity]
    stack_trace: str | None


def _without_query_task(stack: str) -> str:
    """The workflow's own tasks: the Python SDK also lists the task answering this query."""
    chunks = re.split(r"(?m)^(?=Stack for )", stack)
    kept = [c.rstrip() for c in chunks if c.strip() and "query: __stack_trace" not in c]
    return "\n\n".join(kept)


def _when(ts: Any) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None


async def run_now(workflow_id: str, run_id: str, with_stack: bool = True) -> RunNow:
    """Pending activities from describe() and the `__stack_trace` query (None if unanswered).

    The stack trace is asked for only `with_stack`: a traced worker records
    every query it answers as a span of the run.
    """
    from temporalio.api.enums.v1 import PendingActivityState

    async with _reading(workflow_id, run_id) as handle:
        description = await handle.describe(rpc_timeout=ACTION_TIMEOUT)
    pending = [
        PendingActivity(
            activity_id=p.activity_id,
            activity_type=p.activity_type.name,
            state=PendingActivityState.Name(p.state)
            .removeprefix("PENDING_ACTIVITY_STATE_")
            .lower(),
            attempt=p.attempt,
            maximum_attempts=p.maximum_attempts,
            last_failure=p.last_failure.message if p.HasField("last_failure") else "",
            scheduled=_when(p.scheduled_time),
            last_started=_when(p.last_started_time),
            next_attempt=_when(p.next_attempt_schedule_time),
        )
        for p in description.raw_description.pending_activities
    ]
    status = (description.status or WorkflowExecutionStatus.RUNNING).name
    stack: str | None = None
    if status == "RUNNING" and with_stack:
        try:
            stack = _without_query_task(
                str(await handle.query("__stack_trace", rpc_timeout=WORKER_ANSWER_TIMEOUT))
            )
        except (RPCError, WorkflowQueryFailedError) as exc:
            logger.info("no stack trace for %s / %s: %s", workflow_id, run_id, exc)
    return RunNow(status=status, pending=pending, stack_trace=stack)

"""Temporal's OpenTelemetry plugin with its per-workflow hot paths written out.

:class:`LeanOpenTelemetryPlugin` is ``temporalio.contrib.opentelemetry``'s
``OpenTelemetryPlugin``, and makes the same spans and headers: the same names,
kinds, attributes, scope, parents, statuses and recorded exceptions, the same
``_tracer-data`` header (JSON of the W3C carrier, byte for byte what Temporal's
payload converter writes), read the same way, through the same replay-safe
tracer. Only the three calls every workflow makes many times are written as
straight-line code: running a workflow, starting an activity from it and
running that activity. Temporal's versions nest five generator context managers
per span (``attached_context`` twice, ``_maybe_span``, ``start_as_current_span``,
``use_span``) and convert each header through the payload converter's chain;
in a worker those objects, a few hundred per workflow, cost CPU and bring the
garbage collector's full collections sooner (``bench/README.md``, issue 16).
Signals, queries, updates, child workflows, Nexus and the client side are
Temporal's own code, unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import Token
from typing import Any

import opentelemetry.context as otel_context
from opentelemetry.baggage import _BAGGAGE_KEY
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    get_tracer,
    set_span_in_context,
)
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.contrib.opentelemetry import OpenTelemetryPlugin
from temporalio.contrib.opentelemetry import _otel_interceptor as stock
from temporalio.contrib.opentelemetry._context import _detach
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    StartActivityInput,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from telemetry.temporal_spans import current_span_context

HEADER = "_tracer-data"
_JSON = b"json/plain"
# Temporal's spans carry its interceptor module as their instrumentation scope.
_SCOPE = stock.__name__
_propagator = stock.default_text_map_propagator


def context_from_headers(headers: Mapping[str, Payload]) -> Context:
    """Temporal's ``_headers_to_context``: a JSON header is read directly, and one
    that is not a JSON object (which fails Temporal's reader, and with it the
    workflow task or activity) is no context."""
    header = headers.get(HEADER)
    if not header:
        return Context()
    if header.metadata.get("encoding") == _JSON:
        data = header.data
        if len(data) == _TRACEPARENT_ONLY and data.startswith(_TRACEPARENT_OPEN):
            # What the other side wrote with no trace state or baggage (the usual
            # header): the propagators' reading of it, without the JSON and the
            # propagator chain in between.
            found = _traceparent_context(data)
            if found is not None:
                return found
        try:
            carrier = json.loads(data)
        except ValueError:
            return Context()
        return _propagator.extract(carrier) if type(carrier) is dict else Context()
    return stock._headers_to_context(headers)


# {"traceparent":"00-<32 hex>-<16 hex>-<2 hex>"}: JSON of the W3C carrier alone.
_TRACEPARENT_OPEN = b'{"traceparent":"'
_TRACEPARENT_ONLY = len(_TRACEPARENT_OPEN) + 55 + 2
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _traceparent_context(data: bytes) -> Context | None:
    """The context ``TraceContextTextMapPropagator`` extracts from a carrier whose only
    entry is a version-00 ``traceparent``; None for anything else."""
    if not data.endswith(b'"}'):
        return None
    match = _TRACEPARENT.fullmatch(data[len(_TRACEPARENT_OPEN) : -2].decode("ascii", "replace"))
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return Context()  # what the propagator makes of all-zero ids: nothing
    remote = SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16))
    )
    return set_span_in_context(NonRecordingSpan(remote), Context())


def context_to_headers(headers: Mapping[str, Payload]) -> Mapping[str, Payload]:
    """Temporal's ``_context_to_headers``: the payload its default converter makes."""
    current = otel_context.get_current()
    span_context = current_span_context(current)
    if not current.get(_BAGGAGE_KEY) and not span_context.trace_state:
        # The carrier is the current span's traceparent alone, which the propagators
        # would write: the usual case, written here.
        if span_context == INVALID_SPAN_CONTEXT:
            return headers
        data = b'{"traceparent":"00-%032x-%016x-%02x"}' % (
            span_context.trace_id,
            span_context.span_id,
            span_context.trace_flags,
        )
    else:
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        if not carrier:
            return headers
        data = json.dumps(carrier, separators=(",", ":"), sort_keys=True).encode()
    return {**headers, HEADER: Payload(metadata={"encoding": _JSON}, data=data)}


def _failed(span: Any, error: Exception) -> None:
    """What ``_maybe_span`` and ``use_span`` do when the block raises."""
    if not isinstance(error, ApplicationError) or error.category != ApplicationErrorCategory.BENIGN:
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    if span.is_recording():
        span.record_exception(error)


def _start(name: str, kind: SpanKind, attributes: dict[str, Any]) -> tuple[Any, Token[Context]]:
    """``start_as_current_span`` through the provider's (replay-safe) tracer."""
    span = get_tracer(_SCOPE).start_span(
        name, kind=kind, attributes=attributes, set_status_on_exception=False
    )
    return span, otel_context.attach(set_span_in_context(span))


def _end(span: Any, token: Token[Context]) -> None:
    otel_context.detach(token)
    span.end()


async def _run(
    headers: Mapping[str, Payload],
    span: tuple[str, dict[str, Any]] | None,
    call: Callable[[Any], Awaitable[Any]],
    input: Any,
) -> Any:
    """``call(input)`` under the context its headers carry and, unless ``span`` is
    None, in a server span of that name and those attributes."""
    context = context_from_headers(headers)
    token = otel_context.attach(context)
    try:
        if span is None:
            return await call(input)
        started, current = _start(span[0], SpanKind.SERVER, span[1])
        try:
            return await call(input)
        except Exception as error:
            _failed(started, error)
            raise
        finally:
            _end(started, current)
    finally:
        _detach(context, token)


class _LeanActivityInbound(stock._TracingActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        span = None
        if self._add_temporal_spans:
            info = activity.info()
            span = (
                f"RunActivity:{info.activity_type}",
                {
                    "temporalWorkflowID": info.workflow_id or "",
                    "temporalRunID": info.workflow_run_id or "",
                    "temporalActivityID": info.activity_id,
                },
            )
        return await _run(input.headers, span, self.next.execute_activity, input)


class _LeanWorkflowOutbound(stock._TracingWorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        if not self._add_temporal_spans:
            input.headers = context_to_headers(input.headers)
            return self.next.start_activity(input)
        info = workflow.info()
        span, current = _start(
            f"StartActivity:{input.activity}",
            SpanKind.CLIENT,
            {"temporalWorkflowID": info.workflow_id, "temporalRunID": info.run_id},
        )
        try:
            input.headers = context_to_headers(input.headers)
            return self.next.start_activity(input)
        except Exception as error:
            _failed(span, error)
            raise
        finally:
            _end(span, current)


class _LeanWorkflowInbound(stock._TracingWorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        self.next.init(_LeanWorkflowOutbound(outbound, self._add_temporal_spans))

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        span = None
        if self._add_temporal_spans:
            info = workflow.info()
            span = (
                f"RunWorkflow:{info.workflow_type}",
                {"temporalWorkflowID": info.workflow_id, "temporalRunID": info.run_id},
            )
        return await _run(input.headers, span, self.next.execute_workflow, input)


class LeanOpenTelemetryInterceptor(stock.OpenTelemetryInterceptor):
    """Temporal's ``OpenTelemetryInterceptor`` with the lean paths above."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _LeanActivityInbound(next, self._add_temporal_spans)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[stock._TracingWorkflowInboundInterceptor]:
        super().workflow_interceptor_class(input)  # checks the provider is replay-safe
        add_temporal_spans = self._add_temporal_spans

        class Inbound(_LeanWorkflowInbound):
            _add_temporal_spans = add_temporal_spans

        return Inbound


class LeanOpenTelemetryPlugin(OpenTelemetryPlugin):
    """Temporal's ``OpenTelemetryPlugin`` (the sandbox's pass-through of
    ``opentelemetry`` included) with :class:`LeanOpenTelemetryInterceptor`."""

    def __init__(self, *, add_temporal_spans: bool = False) -> None:
        super().__init__(add_temporal_spans=add_temporal_spans)
        self.interceptors = [LeanOpenTelemetryInterceptor(add_temporal_spans)]

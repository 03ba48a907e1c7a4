"""Temporal's own spans (``RunWorkflow``, ``StartActivity``, ``RunActivity``, ...) made lean.

``temporalio.contrib.opentelemetry``'s interceptor starts a span of the OTel SDK
for each of them: a sampler call, a ``BoundedAttributes`` with its lock and
validation, a lock on start and end, processor hooks, a ``ReadableSpan`` copy on
end. In a worker that serves many workflows that was about a third of what
tracing cost beside the Agents SDK bridge. :class:`LeanTracer` makes the same
spans (same ids from the same generator, same parent, kind, attributes, status,
events, start and end) as :class:`LeanSpan`, a plain record with the API's
methods, and hands it to the same span processors when it ends.

It takes the lean path only where the SDK's decisions are known in advance:
the default sampler (``ParentBased(ALWAYS_ON)``), the tracer enabled, the SDK's
internal metrics off. Otherwise it is the SDK's tracer.

Pure Python: no Django.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from types import MappingProxyType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, sampling
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
from opentelemetry.sdk.util import BoundedList
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.util import types

logger = logging.getLogger(__name__)

_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_NOT_SAMPLED_RANDOM = TraceFlags(TraceFlags.DEFAULT | TraceFlags.RANDOM_TRACE_ID)


def _default_sampler(sampler: Any) -> bool:
    """The SDK's default sampler, ``ParentBased(ALWAYS_ON)``: sample a root and any
    child of a sampled parent, drop children of a parent that is not sampled."""
    return (
        type(sampler) is sampling.ParentBased
        and sampler._root is sampling.ALWAYS_ON
        and sampler._remote_parent_sampled is sampling.ALWAYS_ON
        and sampler._local_parent_sampled is sampling.ALWAYS_ON
        and sampler._remote_parent_not_sampled is sampling.ALWAYS_OFF
        and sampler._local_parent_not_sampled is sampling.ALWAYS_OFF
    )


def lean_now(tracer: SdkTracer) -> bool:
    """Whether :class:`LeanTracer` still makes what ``tracer`` (the SDK's, with the
    default sampler) would: the tracer is enabled, its internal metrics are off."""
    return tracer._is_enabled() and type(tracer._tracer_metrics) is NoOpTracerMetrics


def current_span_context(context: Any = None) -> SpanContext:
    """``opentelemetry.trace.get_current_span(context).get_span_context()``, without
    its ``isinstance`` check against the ``Span`` ABC: in a workflow's sandbox every
    ``isinstance`` is a chain of Python calls, and every span asks for this."""
    span: Any = context_api.get_value(_SPAN_KEY, context)
    if span is None:
        return INVALID_SPAN_CONTEXT
    try:
        found: SpanContext = span.get_span_context()
    except AttributeError:  # not a span: get_current_span would say there is none
        return INVALID_SPAN_CONTEXT
    return found


class LeanTracer(trace_api.Tracer):
    """The SDK tracer's spans as :class:`LeanSpan` records (see the module's note)."""

    def __init__(self, sdk_tracer: SdkTracer) -> None:
        self._sdk = sdk_tracer
        self._resource = sdk_tracer.resource
        self._processor = sdk_tracer.span_processor
        self._ids = sdk_tracer.id_generator
        self._scope = sdk_tracer._instrumentation_scope
        self._limits = sdk_tracer._span_limits
        # Its class and sampler are fixed: checked once (isinstance and the sampler's
        # parts are not free in a workflow's sandbox); the rest on every span.
        self._lean_tracer = isinstance(sdk_tracer, SdkTracer) and _default_sampler(
            sdk_tracer.sampler
        )

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace_api.Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace_api.Span:
        if links or not (self._lean_tracer and lean_now(self._sdk)):
            return self._sdk.start_span(
                name,
                context,
                kind,
                attributes,
                links,
                start_time,
                record_exception,
                set_status_on_exception,
            )
        parent: SpanContext | None = current_span_context(context)
        # What the SDK's start_span does with the default sampler, in the same
        # order (the ids come from Temporal's deterministic generator).
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self._ids.generate_trace_id()
            sampled = True
            random_id = self._ids.is_trace_id_random()
            trace_state = None
        else:
            trace_id = parent.trace_id
            flags = parent.trace_flags
            sampled = flags.sampled
            random_id = flags.random_trace_id
            trace_state = parent.trace_state
        if sampled:
            trace_flags = _SAMPLED_RANDOM if random_id else _SAMPLED
        else:
            trace_flags = _NOT_SAMPLED_RANDOM if random_id else _NOT_SAMPLED
        span_context = SpanContext(
            trace_id,
            self._ids.generate_span_id(),
            is_remote=False,
            trace_flags=trace_flags,
            trace_state=trace_state,
        )
        if not sampled:
            return trace_api.NonRecordingSpan(span_context)
        span = LeanSpan(
            name,
            span_context,
            parent,
            self,
            kind,
            attributes,
            record_exception,
            set_status_on_exception,
            start_time if start_time is not None else time_ns(),
        )
        self._processor.on_start(span, parent_context=context)  # type: ignore[arg-type]
        return span

    def start_as_current_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace_api.Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Any:
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        return trace_api.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        )


def _bounded(attributes: types.Attributes, limits: SpanLimits) -> BoundedAttributes:
    return BoundedAttributes(
        limits.max_span_attributes,
        attributes,
        immutable=False,
        max_value_len=limits.max_span_attribute_length,
    )


def _own_attributes(attributes: types.Attributes, limits: SpanLimits) -> Any:
    """A span's own copy of its attributes: a plain dict when a few short strings
    (Temporal's ids and names, the usual case), else the SDK's validated mapping."""
    if not attributes:
        return {}
    if (
        limits.max_span_attribute_length is None
        and (limits.max_span_attributes is None or len(attributes) <= limits.max_span_attributes)
        and all(type(value) is str for value in attributes.values())
    ):
        return dict(attributes)
    return _bounded(attributes, limits)


class LeanSpan(trace_api.Span, ReadableSpan):
    """A recording span with what the SDK's span has, without its per-span machinery.

    Once ended it is its own :class:`ReadableSpan` (the processors read it as they
    read the SDK's); changes after the end are ignored with a warning, as there.
    """

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        tracer: LeanTracer,
        kind: SpanKind,
        attributes: types.Attributes,
        record_exception: bool,
        set_status_on_exception: bool,
        start_time: int,
    ) -> None:
        self._name = name
        self._context = context
        self._parent = parent
        self._tracer = tracer
        self._kind = kind
        self._resource = tracer._resource
        self._instrumentation_scope = tracer._scope
        self._instrumentation_info = None
        self._attributes: Any = _own_attributes(attributes, tracer._limits)
        self._events: BoundedList | tuple[()] = ()
        self._links: tuple[()] = ()
        self._status = _UNSET
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception
        self._start_time: int | None = start_time
        self._end_time: int | None = None

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'

    # -- ReadableSpan (the properties the SDK's span has) ----------------------------
    @property
    def attributes(self) -> types.Attributes:
        return MappingProxyType(self._attributes)

    @property
    def events(self) -> Sequence[Event]:
        return tuple(self._events)

    @property
    def links(self) -> Sequence[trace_api.Link]:
        return ()

    # -- trace_api.Span --------------------------------------------------------------
    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]

    def is_recording(self) -> bool:
        return self._end_time is None

    def _ended(self, what: str) -> bool:
        if self._end_time is None:
            return False
        logger.warning("Tried to %s on an ended span.", what)
        return True

    def _bounded(self) -> BoundedAttributes:
        if not isinstance(self._attributes, BoundedAttributes):
            self._attributes = _bounded(self._attributes, self._tracer._limits)
        return self._attributes

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        if self._end_time is not None:
            logger.warning("Setting attribute on ended span.")
            return
        self._bounded()._set_items(attributes)

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self._end_time is not None:
            logger.warning("Setting attribute on ended span.")
            return
        self._bounded()[key] = value

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._ended("add_event"):
            return
        limits = self._tracer._limits
        if not isinstance(self._events, BoundedList):
            self._events = BoundedList(limits.max_events)
        bounded = BoundedAttributes(
            limits.max_event_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        self._events.append(Event(name=name, attributes=bounded, timestamp=timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        # Links after the start are rare; the tracer gives spans with links to the SDK.
        logger.warning("LeanSpan %s: add_link after start is not recorded", self._name)

    def update_name(self, name: str) -> None:
        if self._ended("update_name"):
            return
        self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._ended("set_status"):
            return
        # As the SDK: an OK status is final, UNSET is ignored.
        if self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                logger.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`",
                    description,
                )
            self._status = status
        elif isinstance(status, StatusCode):
            if status is StatusCode.UNSET:
                return
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        stacktrace = "".join(traceback.format_exception(exception))
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        exception_type = f"{module}.{qualname}" if module and module != "builtins" else qualname
        found: dict[str, Any] = {
            EXCEPTION_TYPE: exception_type,
            EXCEPTION_MESSAGE: str(exception),
            EXCEPTION_STACKTRACE: stacktrace,
            EXCEPTION_ESCAPED: str(escaped),
        }
        if attributes:
            found.update(attributes)
        self.add_event(name="exception", attributes=found, timestamp=timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            logger.warning("Calling end() on an ended span.")
            return
        self._end_time = end_time if end_time is not None else time_ns()
        processor = self._tracer._processor
        processor._on_ending(self)  # type: ignore[arg-type]
        processor.on_end(self)

    def __exit__(self, exc_type: Any, exc_val: BaseException | None, exc_tb: Any) -> None:
        if exc_val is not None and self.is_recording():
            if self._record_exception:
                self.record_exception(exception=exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        self.end()

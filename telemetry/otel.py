"""OpenTelemetry for the worker: one call sets up provider, processors and exporters.

- A replay-safe tracer provider (Temporal's), so Temporal's own spans
  (``StartWorkflow``, ``RunWorkflow``, ``StartActivity``, ``RunActivity``,
  signals, queries, updates) are emitted once, not on every replay.
- Every span is enriched with ``temporal.*`` correlation attributes and
  redacted of secrets before any exporter sees it.
- A batch processor exports OTLP/HTTP to the dashboard (the lean
  :class:`telemetry.otlp_http.WireSpanExporter`); the standard
  ``OTEL_EXPORTER_OTLP_*`` variables add the stock exporter to any other collector.
- The Agents SDK's spans reach the same exporters through
  :class:`telemetry.agents_bridge.OtelBridgeProcessor`, which makes them with
  their correlation attributes and redacts them itself; with ``openai_traces``
  (``LOOMVIEW_OPENAI_TRACES``) they also go, redacted the same way, to OpenAI's
  Traces dashboard through the Agents SDK's own exporter.
- :func:`disable_tracing` (``LOOMVIEW_TRACING=off``) removes the Agents SDK's
  default OpenAI exporter too: tracing off sends nothing anywhere.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Status

from telemetry import vocab, wire
from telemetry.agents_bridge import (
    OtelBridgeProcessor,
    RunContext,
    run_context,
    shared_context_attributes,
)
from telemetry.otlp_http import WireBatchSpanProcessor, WireSpanExporter, wire_processors
from telemetry.redact import (
    PATTERNS_ENV,
    parse_patterns,
    redact_attributes,
    redact_text,
    redact_value,
    secret_changes,
    set_extra_patterns,
)
from telemetry.run_ids import RunScopePlugin, run_scoped_tracer_provider
from telemetry.temporal_interceptor import LeanOpenTelemetryPlugin
from telemetry.temporal_spans import LeanSpan

if TYPE_CHECKING:
    from agents.tracing.processors import BatchTraceProcessor

logger = logging.getLogger(__name__)

DEFAULT_DASHBOARD_ENDPOINT = "http://127.0.0.1:8000/v1/traces"
DEFAULT_SERVICE_NAME = "loomview-worker"
DEFAULT_SCHEDULE_DELAY_MS = 200
# The Agents SDK's own default (BackendSpanExporter's ingest endpoint).
DEFAULT_OPENAI_TRACES_ENDPOINT = "https://api.openai.com/v1/traces/ingest"
# "RunWorkflow:triage": the span names that end in the workflow type.
_WORKFLOW_SPAN_NAME_PREFIXES = tuple(f"{prefix}:" for prefix in vocab.WORKFLOW_SPAN_PREFIXES)
# Our attribute → Temporal's spelling of it.
_THEIRS = {ours: theirs for theirs, ours in vocab.TEMPORAL_ALIASES.items()}


def correlation_attributes(attributes: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``temporal.*`` attributes a span of Temporal's (or any span made where a
    workflow or activity runs) lacks: ours for Temporal's spellings, then those of
    where it runs, then the workflow type its name ends in."""
    extra: dict[str, Any] = {}
    for theirs, ours in vocab.TEMPORAL_ALIASES.items():
        if theirs in attributes and ours not in attributes:
            extra[ours] = attributes[theirs]
    for key, value in shared_context_attributes().items():
        if key not in attributes:
            extra[key] = value
    if (
        vocab.WORKFLOW_TYPE not in extra
        and vocab.WORKFLOW_TYPE not in attributes
        and name.startswith(_WORKFLOW_SPAN_NAME_PREFIXES)
    ):
        extra[vocab.WORKFLOW_TYPE] = name.split(":", 1)[1]
    return extra


def _plain(attributes: Any) -> dict[str, Any]:
    """A span's attributes as a plain dict (the SDK's BoundedAttributes copies its own)."""
    if not attributes:
        return {}
    kind = type(attributes)
    if kind is MappingProxyType or kind is dict:  # no isinstance: see current_span_context
        return dict(attributes)
    if isinstance(attributes, BoundedAttributes):
        return attributes.copy()  # type: ignore[return-value]
    return dict(attributes)


class CorrelatingSpanProcessor(SpanProcessor):
    """Adds the ``temporal.*`` attributes of where a span starts (workflow or activity).

    For a processor chain of one's own; the worker's uses :class:`WorkerSpanProcessor`.
    """

    def on_start(self, span: SdkSpan, parent_context: otel_context.Context | None = None) -> None:
        extra = correlation_attributes(_plain(span.attributes), span.name)
        if extra:
            span.set_attributes(extra)


class RedactingSpanProcessor(SpanProcessor):
    """Hands a copy of each finished span, with secrets redacted, to the next processor."""

    def __init__(self, next_processor: SpanProcessor) -> None:
        self._next = next_processor

    def on_end(self, span: ReadableSpan) -> None:
        if span.name.startswith(vocab.TOOLING_QUERY_PREFIX):
            # The dashboard's own polling would fill the run's trace with these.
            return
        self._next.on_end(redact_span(span))

    def shutdown(self) -> None:
        self._next.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._next.force_flush(timeout_millis)


class WorkerSpanProcessor(RedactingSpanProcessor):
    """The worker's processor for its own OTel spans (Temporal's, and any the app makes).

    What :class:`CorrelatingSpanProcessor` and :class:`RedactingSpanProcessor`
    do, done once when the span ends: its attributes copied once, the
    ``temporal.*`` attributes of where it ran added, secrets redacted, and the
    result handed to the exporters. Adding them to the live span instead cost a
    locked, validated write per attribute on every span. A span ends where it
    started (the workflow or activity that made it), so the attributes are the same.
    """

    def __init__(self, next_processor: SpanProcessor) -> None:
        super().__init__(next_processor)
        # Loomview's own batch processors, when they are all there is: a span made
        # by the lean tracer is then written to their queues as OTLP bytes.
        self._queues = wire_processors(next_processor)

    def on_end(self, span: ReadableSpan) -> None:
        name = span.name
        if name.startswith(vocab.TOOLING_QUERY_PREFIX):
            return
        if self._queues is not None and type(span) is LeanSpan and not span._events:
            run = run_context()
            if run is not None and self._straight_to_queues(span, name, run):
                return
        attributes = _plain(span.attributes)
        # What correlation_attributes adds, redacted as redact_span would: the
        # span's own attributes (and ours for Temporal's spellings) here, the
        # run's once per run (telemetry.agents_bridge.RunContext).
        aliased = [
            ours
            for theirs, ours in vocab.TEMPORAL_ALIASES.items()
            if theirs in attributes and ours not in attributes
        ]
        for ours in aliased:
            attributes[ours] = attributes[_THEIRS[ours]]
        changes = secret_changes(attributes)
        if changes:
            attributes.update(changes)
        run = run_context()
        if run is not None:
            for key, value in run.redacted.items():
                if key not in attributes or key in aliased:
                    attributes[key] = value
        if vocab.WORKFLOW_TYPE not in attributes and name.startswith(_WORKFLOW_SPAN_NAME_PREFIXES):
            attributes[vocab.WORKFLOW_TYPE] = redact_text(name.split(":", 1)[1])
        self._next.on_end(redact_span(span, attributes, attributes_redacted=True))

    def _straight_to_queues(self, span: LeanSpan, name: str, run: RunContext) -> bool:
        """:meth:`on_end`'s span, written as OTLP bytes to the batch queues, when that
        is the same span: its own attributes (after Temporal's spellings, which take
        the run's values) do not overlap the run's. The run's attributes, redacted and
        encoded once for all its spans, follow its own, redacted here."""
        own = span._attributes
        if type(own) is not dict:
            return False
        context = run.redacted
        for theirs, ours in vocab.TEMPORAL_ALIASES.items():
            if theirs in own and ours not in own and ours not in context:
                return False  # an alias the run does not have: on_end's own way
        if not context.keys().isdisjoint(own) or vocab.WORKFLOW_TYPE not in context:
            return False
        status = _redacted_status(span._status)
        span_context = span.get_span_context()
        data = wire.span_bytes(
            span_context.trace_id,
            span_context.span_id,
            span._parent,
            redact_text(name),
            span._start_time,
            span._end_time,
            wire.redacted_attributes(own) + run.encoded,
            status,
            span._kind,
            span_context.trace_state,
        )
        record = wire.record_of(wire.group_of(span._resource, span._instrumentation_scope), data)
        for queue in self._queues or ():
            queue.enqueue(record)
        return True


def _redacted_status(status: Status) -> Status:
    """``status`` with its description redacted: itself when there is nothing to redact."""
    if status.description:
        description = redact_text(status.description)
        if description != status.description:
            return Status(status.status_code, description)
    return status


def redact_span(
    span: ReadableSpan,
    attributes: dict[str, Any] | None = None,
    attributes_redacted: bool = False,
) -> ReadableSpan:
    """The span with secrets redacted: the span itself when it has none (most have none).

    ``attributes``: the span's attributes to use instead of its own (a copy the
    caller made, changed in place); the span is then always rebuilt with them.
    ``attributes_redacted``: the caller redacted them already.
    """
    own = attributes is None
    if attributes_redacted and attributes is not None:
        changes: dict[str, Any] = {}
    else:
        changes = secret_changes(span.attributes if attributes is None else attributes)
    name = redact_text(span.name)
    status = _redacted_status(span.status)
    events = span.events
    if events and any(
        redact_text(e.name) != e.name or secret_changes(e.attributes) for e in events
    ):
        events = tuple(
            type(e)(redact_text(e.name), redact_attributes(e.attributes), e.timestamp)
            for e in events
        )
    links = span.links
    if links and any(secret_changes(link.attributes) for link in links):
        links = tuple(
            type(link)(link.context, redact_attributes(link.attributes)) for link in links
        )
    if (
        own
        and not changes
        and name == span.name
        and status is span.status
        and events is span.events
        and links is span.links
    ):
        return span
    if attributes is None:
        attributes = {**(span.attributes or {}), **changes}
    elif changes:
        attributes.update(changes)
    return ReadableSpan(
        name=name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=events,
        links=links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class FanOutSpanProcessor(SpanProcessor):
    """One processor that calls several; the bridge and the provider share it."""

    def __init__(self, processors: Sequence[SpanProcessor]) -> None:
        self._processors = list(processors)

    @property
    def processors(self) -> tuple[SpanProcessor, ...]:
        return tuple(self._processors)

    def on_start(self, span: SdkSpan, parent_context: otel_context.Context | None = None) -> None:
        for processor in self._processors:
            processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self._processors:
            try:
                processor.on_end(span)
            except Exception:  # one broken exporter must not cost the others their spans
                logger.exception("span processor %s failed", type(processor).__name__)

    def shutdown(self) -> None:
        for processor in self._processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush every processor within one shared deadline, as the SDK's multi-processor does.

        Unlike it, a processor that fails or a deadline that passes does not skip
        the rest: each still gets the time that is left (at least a try).
        """
        deadline = time.monotonic_ns() + timeout_millis * 1_000_000
        flushed = True
        for processor in self._processors:
            left_millis = max(0, (deadline - time.monotonic_ns()) // 1_000_000)
            try:
                flushed = processor.force_flush(left_millis) and flushed
            except Exception:  # like on_end: one broken exporter must not stop the others
                logger.exception("span processor %s failed to flush", type(processor).__name__)
                flushed = False
        return flushed and time.monotonic_ns() <= deadline


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def schedule_delay_from_env() -> int:
    """``OTEL_BSP_SCHEDULE_DELAY`` in milliseconds; a bad value warns and is ignored (OTel spec)."""
    return positive_int_from_env("OTEL_BSP_SCHEDULE_DELAY", DEFAULT_SCHEDULE_DELAY_MS)


def batch_processor(exporter: SpanExporter, schedule_delay_ms: int) -> SpanProcessor:
    """A batching processor for ``exporter``: for Loomview's own exporter one that
    encodes each span when it ends (:class:`telemetry.otlp_http.WireBatchSpanProcessor`),
    for any other the SDK's. Both read ``OTEL_BSP_MAX_QUEUE_SIZE`` and
    ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``."""
    if isinstance(exporter, WireSpanExporter):
        queue = positive_int_from_env("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        batch = positive_int_from_env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        return WireBatchSpanProcessor(
            exporter,
            schedule_delay_millis=schedule_delay_ms,
            max_queue_size=queue,
            max_export_batch_size=min(batch, queue),
        )
    return BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_ms)


def positive_int_from_env(name: str, default: int) -> int:
    """A positive whole number from ``name``; a bad value warns and gives ``default``."""
    raw = _env(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        logger.warning("%s must be a positive whole number, got %r; using %d", name, raw, default)
        return default
    return value


def extra_exporter_from_env() -> SpanExporter | None:
    """The collector the standard ``OTEL_EXPORTER_OTLP_*`` variables name, if any."""
    endpoint = _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    protocol = (
        _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or _env("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    if protocol in ("http/protobuf", "http/json"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter reads the endpoint, headers, TLS and timeout variables itself.
        return OTLPSpanExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, got {protocol!r}")


def dashboard_exporter(endpoint: str, token: str | None) -> SpanExporter:
    """The lean OTLP/HTTP exporter to Loomview's receiver (:mod:`telemetry.otlp_http`).

    Explicit arguments: the ``OTEL_*`` variables configure the *other* collector.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return WireSpanExporter(endpoint, headers=headers, timeout=10)


class _RedactedItem:
    """An Agents SDK trace or span as the OpenAI exporter sees it: its export, redacted."""

    __slots__ = ("_item",)

    def __init__(self, item: Any) -> None:
        self._item = item

    @property
    def tracing_api_key(self) -> str | None:
        return getattr(self._item, "tracing_api_key", None)

    def export(self) -> dict[str, Any] | None:
        exported = self._item.export()
        return redact_value(exported) if exported else exported


def _redacted(items: list[Any]) -> list[Any]:
    return [item if isinstance(item, _RedactedItem) else _RedactedItem(item) for item in items]


def openai_traces_processor(endpoint: str | None = None) -> BatchTraceProcessor:
    """The Agents SDK's OpenAI Traces exporter, behind the same redaction as Loomview's."""
    from agents.tracing.processors import BackendSpanExporter, BatchTraceProcessor

    class RedactingBackendSpanExporter(BackendSpanExporter):
        # The batch processor calls export(), or _export_with_deadline() while
        # shutting down; both see only redacted copies.
        def export(self, items: list[Any]) -> None:
            super().export(_redacted(items))

        def _export_with_deadline(self, items: list[Any], deadline: float | None) -> None:
            super()._export_with_deadline(_redacted(items), deadline)

    url = endpoint or _env("LOOMVIEW_OPENAI_TRACES_ENDPOINT") or DEFAULT_OPENAI_TRACES_ENDPOINT
    return BatchTraceProcessor(RedactingBackendSpanExporter(endpoint=url))


def env_switch(name: str, default: bool) -> bool:
    raw = _env(name).lower()
    if not raw:
        return default
    if raw in ("on", "off"):
        return raw == "on"
    raise ValueError(f"{name} must be on or off, got {raw!r}")


def disable_tracing() -> None:
    """``LOOMVIEW_TRACING=off``: no Agents SDK processor at all, so nothing is sent anywhere.

    Without this the Agents SDK's default exporter would send every prompt and
    answer to OpenAI when a key is set, and warn on every batch when not.
    """
    from agents import set_trace_processors

    set_trace_processors([])


@dataclass
class WorkerTracing:
    """What :func:`configure_tracing` set up; plugins go on the Temporal client."""

    provider: Any
    processor: RedactingSpanProcessor
    bridge: OtelBridgeProcessor
    plugins: list[Any] = field(default_factory=list)
    openai_processor: BatchTraceProcessor | None = None

    def shutdown(self) -> None:
        """Flush what is buffered, then stop the exporters."""
        try:
            self.processor.force_flush(5000)
        finally:
            self.processor.shutdown()
            if self.openai_processor is not None:
                self.openai_processor.shutdown(timeout=5.0)


def configure_tracing(
    service_name: str | None = None,
    dashboard_endpoint: str | None = None,
    exporters: Sequence[SpanExporter] | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    schedule_delay_ms: int | None = None,
    set_global: bool = True,
    openai_traces: bool | None = None,
    openai_traces_endpoint: str | None = None,
) -> WorkerTracing:
    """Set up OpenTelemetry for the worker; arguments override environment variables.

    ``exporters`` replaces the default exporters (dashboard + OTEL_* collector).
    ``openai_traces`` (``LOOMVIEW_OPENAI_TRACES``, default off) keeps the Agents
    SDK's export to OpenAI's Traces dashboard next to the bridge.
    """
    from agents import set_trace_processors

    name = service_name or _env("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    if _env(PATTERNS_ENV):
        set_extra_patterns(parse_patterns(_env(PATTERNS_ENV)))
    resource = Resource.create({SERVICE_NAME: name, **(resource_attributes or {})})
    if exporters is None:
        endpoint = (
            dashboard_endpoint or _env("LOOMVIEW_OTLP_ENDPOINT") or DEFAULT_DASHBOARD_ENDPOINT
        )
        chosen: list[SpanExporter] = [
            dashboard_exporter(endpoint, _env("LOOMVIEW_OTLP_TOKEN") or None)
        ]
        extra = extra_exporter_from_env()
        if extra is not None:
            chosen.append(extra)
    else:
        chosen = list(exporters)
    delay = schedule_delay_ms or schedule_delay_from_env()
    batches = [batch_processor(exporter, delay) for exporter in chosen]
    exporting = FanOutSpanProcessor(batches)
    processor = WorkerSpanProcessor(exporting)
    # Temporal's replay-safe provider, with span ids distinct per run (resets).
    provider = run_scoped_tracer_provider(resource)
    provider.add_span_processor(processor)
    if set_global:
        otel_trace.set_tracer_provider(provider)
    if openai_traces is None:
        openai_traces = env_switch("LOOMVIEW_OPENAI_TRACES", False)
    # The bridge redacts its spans itself and makes them with their temporal.*
    # attributes: they go straight to the exporters.
    bridge = OtelBridgeProcessor(exporting, resource, openai_traces=openai_traces)
    # The bridge replaces the Agents SDK's default exporter (to OpenAI's backend);
    # OpenAI's dashboard gets the spans only when asked for, redacted like ours.
    openai = openai_traces_processor(openai_traces_endpoint) if openai_traces else None
    if openai is not None and not _env("OPENAI_API_KEY"):
        logger.warning("LOOMVIEW_OPENAI_TRACES=on needs OPENAI_API_KEY: OpenAI gets no traces")
    set_trace_processors([bridge] if openai is None else [bridge, openai])
    return WorkerTracing(
        provider=provider,
        processor=processor,
        bridge=bridge,
        plugins=[LeanOpenTelemetryPlugin(add_temporal_spans=True), RunScopePlugin()],
        openai_processor=openai,
    )

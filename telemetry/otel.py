"""OpenTelemetry for the worker: one call sets up provider, processors and exporters.

- A replay-safe tracer provider (Temporal's), so Temporal's own spans
  (``StartWorkflow``, ``RunWorkflow``, ``StartActivity``, ``RunActivity``,
  signals, queries, updates) are emitted once, not on every replay.
- Every span is enriched with ``temporal.*`` correlation attributes and
  redacted of secrets before any exporter sees it.
- A batch processor exports OTLP/HTTP to the dashboard; the standard
  ``OTEL_EXPORTER_OTLP_*`` variables add an exporter to any other collector.
- The Agents SDK's spans reach the same processors through
  :class:`telemetry.agents_bridge.OtelBridgeProcessor`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Status
from temporalio.contrib.opentelemetry import OpenTelemetryPlugin, create_tracer_provider

from telemetry import vocab
from telemetry.agents_bridge import OtelBridgeProcessor, temporal_context_attributes
from telemetry.redact import redact_attributes, redact_text

logger = logging.getLogger(__name__)

DEFAULT_DASHBOARD_ENDPOINT = "http://127.0.0.1:8000/v1/traces"
DEFAULT_SERVICE_NAME = "loomview-worker"
DEFAULT_SCHEDULE_DELAY_MS = 200


class CorrelatingSpanProcessor(SpanProcessor):
    """Adds the ``temporal.*`` attributes of where a span starts (workflow or activity)."""

    def on_start(self, span: SdkSpan, parent_context: otel_context.Context | None = None) -> None:
        attributes = dict(span.attributes or {})
        extra = {
            ours: attributes[theirs]
            for theirs, ours in vocab.TEMPORAL_ALIASES.items()
            if theirs in attributes and ours not in attributes
        }
        for key, value in temporal_context_attributes().items():
            if key not in attributes:
                extra[key] = value
        if (
            span.name.startswith(("RunWorkflow:", "StartWorkflow:"))
            and vocab.WORKFLOW_TYPE not in attributes
        ):
            extra.setdefault(vocab.WORKFLOW_TYPE, span.name.split(":", 1)[1])
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


def redact_span(span: ReadableSpan) -> ReadableSpan:
    status = span.status
    if status.description:
        status = Status(status.status_code, redact_text(status.description))
    events = tuple(
        type(event)(event.name, redact_attributes(event.attributes), event.timestamp)
        for event in span.events
    )
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=redact_attributes(span.attributes),
        events=events,
        links=span.links,
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
        return all(p.force_flush(timeout_millis) for p in self._processors)


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


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
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Explicit arguments: the OTEL_* variables configure the *other* collector.
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=10)


@dataclass
class WorkerTracing:
    """What :func:`configure_tracing` set up; plugins go on the Temporal client."""

    provider: Any
    processor: SpanProcessor
    bridge: OtelBridgeProcessor
    plugins: list[Any] = field(default_factory=list)

    def shutdown(self) -> None:
        """Flush what is buffered, then stop the exporters."""
        try:
            self.processor.force_flush(5000)
        finally:
            self.processor.shutdown()


def configure_tracing(
    service_name: str | None = None,
    dashboard_endpoint: str | None = None,
    exporters: Sequence[SpanExporter] | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    schedule_delay_ms: int | None = None,
    set_global: bool = True,
) -> WorkerTracing:
    """Set up OpenTelemetry for the worker; arguments override environment variables.

    ``exporters`` replaces the default exporters (dashboard + OTEL_* collector).
    """
    from agents import set_trace_processors

    name = service_name or _env("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
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
    delay = schedule_delay_ms or int(_env("OTEL_BSP_SCHEDULE_DELAY") or DEFAULT_SCHEDULE_DELAY_MS)
    batches = [BatchSpanProcessor(exporter, schedule_delay_millis=delay) for exporter in chosen]
    processor = FanOutSpanProcessor(
        [CorrelatingSpanProcessor(), RedactingSpanProcessor(FanOutSpanProcessor(batches))]
    )
    provider = create_tracer_provider(resource=resource)
    provider.add_span_processor(processor)
    if set_global:
        otel_trace.set_tracer_provider(provider)
    bridge = OtelBridgeProcessor(processor, resource)
    # Replace the Agents SDK's default exporter (to OpenAI's backend) with the bridge.
    set_trace_processors([bridge])
    return WorkerTracing(
        provider=provider,
        processor=processor,
        bridge=bridge,
        plugins=[OpenTelemetryPlugin(add_temporal_spans=True)],
    )

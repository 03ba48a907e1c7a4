"""Agents SDK spans → OpenTelemetry spans, correctly nested and replay-safe.

The Agents SDK has its own tracing model (traces and typed spans). This bridge is
an Agents SDK ``TracingProcessor`` that turns each finished Agents span into one
OTel span carrying the Temporal correlation attributes, the GenAI semantic
conventions and the OpenInference equivalents.

Replay safety comes from two facts:

- Inside a workflow, ``TemporalTraceProvider`` gives every Agents span a
  deterministic id and does not call processors while history is replayed.
- This bridge emits a span once, when it *ends*, with ids derived from the
  Agents ids. A span whose start was replayed on a new worker (after a crash)
  still ends live exactly once, with the same id it would have had.

The OTel trace id is the one of the current OTel context (Temporal's
``RunWorkflow``/``RunActivity`` spans, which share one trace), so agent spans sit
in the same trace as Temporal's own spans; without an OTel context it is derived
from the Agents trace id, the same way in workflow and activity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from agents import Span, Trace, TracingProcessor
from agents.tracing.span_data import (
    AgentSpanData,
    CustomSpanData,
    FunctionSpanData,
    GenerationSpanData,
    GuardrailSpanData,
    HandoffSpanData,
    MCPListToolsSpanData,
    ResponseSpanData,
)
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from temporalio import activity, workflow

logger = logging.getLogger(__name__)

SCOPE = InstrumentationScope("loomview.agents_bridge", "1")
MAX_ATTRIBUTE_CHARS = 32_000

# Agents SDK span type → (OpenInference span kind, GenAI operation name).
_KINDS: dict[str, tuple[str, str | None]] = {
    "trace": ("CHAIN", None),
    "agent": ("AGENT", "invoke_agent"),
    "generation": ("LLM", "chat"),
    "response": ("LLM", "chat"),
    "function": ("TOOL", "execute_tool"),
    "handoff": ("TOOL", None),
    "guardrail": ("GUARDRAIL", None),
    "custom": ("CHAIN", None),
    "mcp_tools": ("TOOL", None),
    "task": ("CHAIN", None),
    "turn": ("CHAIN", None),
}


def _hex_id(seed: str, bits: int) -> int:
    value = int.from_bytes(hashlib.sha256(seed.encode()).digest()[: bits // 8], "big")
    return value or 1


def span_id_for(agents_id: str) -> int:
    """The OTel span id of an Agents span or trace id; the same in every process."""
    return _hex_id(f"span:{agents_id}", 64)


def trace_id_for(agents_trace_id: str) -> int:
    return _hex_id(f"trace:{agents_trace_id}", 128)


def _ns(iso: str | None) -> int | None:
    if not iso:
        return None
    return int(datetime.fromisoformat(iso).timestamp() * 1_000_000_000)


def _now_ns() -> int:
    if workflow.in_workflow():
        return int(workflow.now().timestamp() * 1_000_000_000)
    import time

    return time.time_ns()


def to_json(value: Any) -> str:
    """JSON text of a model/tool payload, clipped so one span stays a sane size."""
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=_jsonable, ensure_ascii=False)
    if len(text) > MAX_ATTRIBUTE_CHARS:
        text = text[:MAX_ATTRIBUTE_CHARS] + "…[truncated]"
    return text


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(exclude_none=True)
    return str(value)


def temporal_context_attributes() -> dict[str, Any]:
    """The Temporal correlation attributes of where this code runs (workflow or activity)."""
    if workflow.in_workflow():
        info = workflow.info()
        return {
            "temporal.workflow.id": info.workflow_id,
            "temporal.run.id": info.run_id,
            "temporal.workflow.type": info.workflow_type,
            "temporal.namespace": info.namespace,
            "temporal.task_queue": info.task_queue,
        }
    if activity.in_activity():
        a = activity.info()
        return {
            "temporal.workflow.id": a.workflow_id or "",
            "temporal.run.id": a.workflow_run_id or "",
            "temporal.workflow.type": a.workflow_type or "",
            "temporal.namespace": a.workflow_namespace or a.namespace,
            "temporal.task_queue": a.task_queue,
            "temporal.activity.id": a.activity_id,
            "temporal.activity.type": a.activity_type,
            "temporal.activity.attempt": a.attempt,
        }
    return {}


def _messages(items: Any) -> list[dict[str, Any]]:
    """Normalize model input/output items into chat-like messages for GenAI attributes."""
    if items is None:
        return []
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for raw in items if isinstance(items, Sequence) else [items]:
        item = _jsonable(raw) if not isinstance(raw, Mapping) else dict(raw)
        if not isinstance(item, Mapping):
            messages.append({"role": "user", "content": str(item)})
            continue
        kind = item.get("type")
        if kind == "function_call":
            messages.append(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": item.get("call_id"),
                            "name": item.get("name"),
                            "arguments": item.get("arguments"),
                        }
                    ],
                }
            )
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")}
            )
        else:
            content = item.get("content")
            if isinstance(content, list):
                content = "".join(
                    str(part.get("text", "")) if isinstance(part, Mapping) else str(part)
                    for part in content
                )
            messages.append({"role": item.get("role", "assistant"), "content": content})
    return messages


def _flatten_messages(
    prefix: str, messages: list[dict[str, Any]], limit: int = 20
) -> dict[str, Any]:
    """OpenInference's flattened message attributes (llm.input_messages.N.message.*)."""
    out: dict[str, Any] = {}
    for index, message in enumerate(messages[:limit]):
        base = f"{prefix}.{index}.message"
        out[f"{base}.role"] = str(message.get("role", ""))
        if message.get("content") is not None:
            out[f"{base}.content"] = to_json(message["content"])
        for call_index, call in enumerate(message.get("tool_calls", [])):
            out[f"{base}.tool_calls.{call_index}.tool_call.function.name"] = str(call.get("name"))
            out[f"{base}.tool_calls.{call_index}.tool_call.function.arguments"] = to_json(
                call.get("arguments") or ""
            )
    return out


def _usage_attributes(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    if not usage:
        return {}
    prompt = int(usage.get("input_tokens", usage.get("prompt_tokens", 0)) or 0)
    completion = int(usage.get("output_tokens", usage.get("completion_tokens", 0)) or 0)
    return {
        "gen_ai.usage.input_tokens": prompt,
        "gen_ai.usage.output_tokens": completion,
        "llm.token_count.prompt": prompt,
        "llm.token_count.completion": completion,
        "llm.token_count.total": prompt + completion,
    }


def span_name_and_attributes(data: Any) -> tuple[str, dict[str, Any]]:
    """The OTel name and type-specific attributes of one Agents span's data."""
    kind = getattr(data, "type", "custom")
    attrs: dict[str, Any] = {"agents.span.type": kind}
    oi_kind, operation = _KINDS.get(kind, ("CHAIN", None))
    attrs["openinference.span.kind"] = oi_kind
    if operation:
        attrs["gen_ai.operation.name"] = operation
    if isinstance(data, AgentSpanData):
        attrs.update(
            {
                "gen_ai.agent.name": data.name,
                "agents.agent.name": data.name,
                "graph.node.id": data.name,
                "agents.agent.tools": list(data.tools or []),
                "agents.agent.handoffs": list(data.handoffs or []),
            }
        )
        if data.output_type:
            attrs["agents.agent.output_type"] = data.output_type
        return f"invoke_agent {data.name}", attrs
    if isinstance(data, GenerationSpanData):
        inputs, outputs = _messages(data.input), _messages(data.output)
        model = data.model or "unknown"
        attrs.update(
            {
                "gen_ai.request.model": model,
                "gen_ai.response.model": model,
                "llm.model_name": model,
                "gen_ai.input.messages": to_json(inputs),
                "gen_ai.output.messages": to_json(outputs),
                "input.value": to_json(inputs),
                "input.mime_type": "application/json",
                "output.value": to_json(outputs),
                "output.mime_type": "application/json",
                **_flatten_messages("llm.input_messages", inputs),
                **_flatten_messages("llm.output_messages", outputs),
                **_usage_attributes(data.usage),
            }
        )
        if data.model_config:
            attrs["llm.invocation_parameters"] = to_json(data.model_config)
        return f"chat {model}", attrs
    if isinstance(data, ResponseSpanData):
        response = data.response
        model = str(getattr(response, "model", None) or "unknown")
        usage = getattr(response, "usage", None)
        outputs = _messages(list(getattr(response, "output", None) or []))
        inputs = _messages(data.input)
        attrs.update(
            {
                "gen_ai.request.model": model,
                "gen_ai.response.model": model,
                "llm.model_name": model,
                "gen_ai.input.messages": to_json(inputs),
                "gen_ai.output.messages": to_json(outputs),
                "input.value": to_json(inputs),
                "output.value": to_json(outputs),
                **_flatten_messages("llm.input_messages", inputs),
                **_flatten_messages("llm.output_messages", outputs),
                **_usage_attributes(_jsonable(usage) if usage is not None else data.usage),
            }
        )
        if response is not None:
            attrs["gen_ai.response.id"] = str(response.id)
        return f"chat {model}", attrs
    if isinstance(data, FunctionSpanData):
        attrs.update(
            {
                "gen_ai.tool.name": data.name,
                "tool.name": data.name,
                "gen_ai.tool.call.arguments": to_json(data.input or ""),
                "gen_ai.tool.call.result": to_json(data.output if data.output is not None else ""),
                "input.value": to_json(data.input or ""),
                "output.value": to_json(data.output if data.output is not None else ""),
            }
        )
        if data.mcp_data:
            attrs["agents.function.mcp_data"] = to_json(data.mcp_data)
        return f"execute_tool {data.name}", attrs
    if isinstance(data, HandoffSpanData):
        attrs.update(
            {
                "agents.handoff.from": data.from_agent or "",
                "agents.handoff.to": data.to_agent or "",
                "gen_ai.agent.name": data.from_agent or "",
            }
        )
        return f"handoff {data.from_agent} → {data.to_agent}", attrs
    if isinstance(data, GuardrailSpanData):
        attrs.update(
            {"agents.guardrail.name": data.name, "agents.guardrail.triggered": data.triggered}
        )
        return f"guardrail {data.name}", attrs
    if isinstance(data, MCPListToolsSpanData):
        attrs.update(
            {"agents.mcp.server": data.server or "", "agents.mcp.tools": list(data.result or [])}
        )
        return f"mcp list_tools {data.server}", attrs
    if isinstance(data, CustomSpanData):
        attrs["agents.custom.name"] = data.name
        attrs["agents.custom.data"] = to_json(data.data or {})
        for key, value in (data.data or {}).items():
            if isinstance(value, str | int | float | bool):
                attrs[f"agents.custom.{key}"] = value
        return data.name or "custom", attrs
    exported = data.export() if hasattr(data, "export") else {}
    name = str(exported.get("name") or kind)
    attrs["agents.data"] = to_json(exported)
    return name, attrs


class OtelBridgeProcessor(TracingProcessor):
    """An Agents SDK tracing processor that hands OTel spans to OTel span processors."""

    def __init__(self, span_processor: SpanProcessor, resource: Resource) -> None:
        self._processor = span_processor
        self._resource = resource
        self._lock = threading.Lock()
        self._trace_starts: dict[str, int] = {}
        self._first_span_start: dict[str, int] = {}

    # -- ids and context -------------------------------------------------------
    def _otel_trace_id(self, agents_trace_id: str) -> int:
        current = otel_trace.get_current_span().get_span_context()
        if current.is_valid:
            return current.trace_id
        return trace_id_for(agents_trace_id)

    def _context(self, trace_id: int, span_id: int) -> SpanContext:
        return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1))

    def _emit(
        self,
        *,
        name: str,
        trace_id: int,
        span_id: int,
        parent: SpanContext | None,
        start: int,
        end: int,
        attributes: dict[str, Any],
        error: Mapping[str, Any] | None,
    ) -> None:
        status = Status(StatusCode.UNSET)
        events = ()
        if error:
            message = str(error.get("message") or "error")
            detail = (
                (error.get("data") or {}).get("error")
                if isinstance(error.get("data"), Mapping)
                else None
            )
            if detail and str(detail) not in message:
                # "Error in agent run" says little; the SDK keeps the cause in data.
                message = f"{message}: {detail}"
            status = Status(StatusCode.ERROR, message)
            attributes["error.type"] = message[:200]
            if error.get("data"):
                attributes["agents.error.data"] = to_json(error["data"])
        span = ReadableSpan(
            name=name,
            context=self._context(trace_id, span_id),
            parent=parent,
            resource=self._resource,
            attributes={k: v for k, v in attributes.items() if v is not None},
            events=events,
            kind=SpanKind.INTERNAL,
            status=status,
            start_time=start,
            end_time=max(end, start),
            instrumentation_scope=SCOPE,
        )
        try:
            self._processor.on_end(span)
        except Exception:  # an exporter never raises into the application
            logger.exception("could not hand span %s to the exporter", name)

    # -- TracingProcessor ------------------------------------------------------
    def on_trace_start(self, trace: Trace) -> None:
        with self._lock:
            self._trace_starts[trace.trace_id] = _now_ns()

    def on_trace_end(self, trace: Trace) -> None:
        end = _now_ns()
        with self._lock:
            start = self._trace_starts.pop(trace.trace_id, None)
            first_child = self._first_span_start.pop(trace.trace_id, None)
        if start is None:
            # The trace began while its workflow was being replayed (e.g. on a new
            # worker after a crash): its start is the earliest child we saw, if any.
            start = first_child if first_child is not None else end
        exported = trace.export() or {}
        current = otel_trace.get_current_span().get_span_context()
        attributes: dict[str, Any] = {
            **temporal_context_attributes(),
            "agents.span.type": "trace",
            "openinference.span.kind": "CHAIN",
            "agents.trace_id": trace.trace_id,
            "agents.trace.name": trace.name,
        }
        if exported.get("group_id"):
            attributes["agents.trace.group_id"] = str(exported["group_id"])
            attributes["session.id"] = str(exported["group_id"])
        if exported.get("metadata"):
            attributes["agents.trace.metadata"] = to_json(exported["metadata"])
        self._emit(
            name=trace.name,
            trace_id=self._otel_trace_id(trace.trace_id),
            span_id=span_id_for(trace.trace_id),
            parent=current if current.is_valid else None,
            start=start,
            end=end,
            attributes=attributes,
            error=None,
        )

    def on_span_start(self, span: Span[Any]) -> None:
        return None

    def on_span_end(self, span: Span[Any]) -> None:
        data = span.span_data
        if isinstance(data, CustomSpanData) and not data.name:
            return  # a placeholder the Temporal plugin makes for a propagated parent
        try:
            name, attributes = span_name_and_attributes(data)
        except Exception:
            logger.exception(
                "could not convert an Agents span of type %s", getattr(data, "type", "?")
            )
            return
        end = _ns(span.ended_at) or _now_ns()
        start = _ns(span.started_at) or end
        with self._lock:
            first = self._first_span_start.get(span.trace_id)
            if first is None or start < first:
                self._first_span_start[span.trace_id] = start
        trace_id = self._otel_trace_id(span.trace_id)
        parent_agents_id = span.parent_id or span.trace_id
        attributes.update(temporal_context_attributes())
        attributes.update(
            {
                "agents.trace_id": span.trace_id,
                "agents.span_id": span.span_id,
                "agents.parent_id": span.parent_id or "",
            }
        )
        self._emit(
            name=name,
            trace_id=trace_id,
            span_id=span_id_for(span.span_id),
            parent=self._context(trace_id, span_id_for(parent_agents_id)),
            start=start,
            end=end,
            attributes=attributes,
            error=span.error,
        )

    def shutdown(self) -> None:
        self._processor.shutdown()

    def force_flush(self) -> None:
        self._processor.force_flush()

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
- Ids are derived from the Agents id *and the run* (telemetry.run_ids): a
  reset run replays its original's Agents ids, and emits its own spans under
  ids of its own rather than colliding with the original's.

The OTel trace id is the one of the current OTel context (Temporal's
``RunWorkflow``/``RunActivity`` spans, which share one trace), so agent spans sit
in the same trace as Temporal's own spans; without an OTel context it is derived
from the Agents trace id, the same way in workflow and activity.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import threading
import weakref
from asyncio import get_running_loop
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from time import time_ns
from typing import Any, cast

import orjson
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
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from temporalio import activity, workflow

from telemetry import vocab, wire
from telemetry.memo import Memo
from telemetry.otlp_http import wire_processors
from telemetry.redact import (
    derived_cache,
    may_name_secret,
    redact_text,
    redact_value,
    secret_changes,
)
from telemetry.run_ids import remote_parents_of
from telemetry.temporal_spans import current_span_context

logger = logging.getLogger(__name__)

SCOPE = InstrumentationScope("loomview.agents_bridge", "1")
_SAMPLED = TraceFlags(1)
_UNSET = Status(StatusCode.UNSET)
MAX_ATTRIBUTE_CHARS = 32_000


def _hex_id(seed: str, bits: int) -> int:
    digest = hashlib.sha256(seed.encode()).digest()[: bits // 8]
    return int.from_bytes(digest, "big") or 1


# Seed text → id (telemetry.memo): every span adds one (its own id).
_SPAN_IDS: Memo[str, int] = Memo(lambda seed: _hex_id(seed, 64), 8192)
_TRACE_IDS: Memo[str, int] = Memo(lambda seed: _hex_id(seed, 128), 8192)


def span_id_for(agents_id: str, scope: str = "") -> int:
    """The OTel span id of an Agents span or trace id; the same in every process.

    ``scope`` is the run the span belongs to (telemetry.run_ids): a reset run
    replays its original's Agents ids, and must not emit its spans under them.
    """
    seed = f"span:{scope}:{agents_id}" if scope else f"span:{agents_id}"
    return _SPAN_IDS[seed]


def trace_id_for(agents_trace_id: str, scope: str = "") -> int:
    seed = f"trace:{scope}:{agents_trace_id}" if scope else f"trace:{agents_trace_id}"
    return _TRACE_IDS[seed]


def _remote_or_own(remote: Mapping[str, str] | None, agents_id: str, own: str) -> str:
    """The run scope an Agents id was emitted under: its sender's if it came in a
    header (a parent workflow's span, ``remote``: :attr:`RunContext.remote`), else
    this run's."""
    if remote:
        return remote.get(agents_id, own)
    return own


def _iso_to_ns(iso: str | None) -> int | None:
    return _TIMES[iso] if iso else None


# ISO time → ns. In a workflow every span of one activation ends (and the next
# starts) at the same workflow time, so most spans find both of theirs here.
_TIMES: Memo[str, int] = Memo(
    lambda iso: int(datetime.fromisoformat(iso).timestamp() * 1_000_000_000), 1024
)


def _now_ns() -> int:
    if workflow.in_workflow():
        return int(workflow.now().timestamp() * 1_000_000_000)
    return time_ns()


def to_json(value: Any) -> str:
    """JSON text of a model/tool payload, clipped so one span stays a sane size."""
    if type(value) is str:
        text = value
    else:
        try:
            text = orjson.dumps(value, default=_jsonable, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int beyond 64 bits
            text = json.dumps(value, default=_jsonable, ensure_ascii=False)
    if len(text) > MAX_ATTRIBUTE_CHARS:
        text = text[:MAX_ATTRIBUTE_CHARS] + "…[truncated]"
    return text


def data_json(value: Any) -> str:
    """:func:`to_json` of structured data (span data, metadata, settings): values
    under secret-named keys (``password``, ``api_key``, ``authorization``, ...)
    redacted first, as they are when they are attributes of their own. Text (a
    message, a tool's arguments) is redacted by what it contains, once it is JSON."""
    text = to_json(value)
    if not may_name_secret(text):
        return text
    # Settings come back on every model call: their redacted JSON is kept, by text.
    clean = _DATA_JSON.get(text)
    if clean is None:
        clean = to_json(redact_value(value))
        if len(text) <= 4096:
            if len(_DATA_JSON) >= 1024:
                _DATA_JSON.clear()
            _DATA_JSON[text] = clean
    return clean


_DATA_JSON: dict[str, str] = derived_cache({})


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(exclude_none=True)
    return str(value)


def temporal_context_attributes() -> dict[str, Any]:
    """The Temporal correlation attributes of where this code runs (workflow or activity).

    A fresh dict, worked out once per workflow run or activity attempt: every span
    there asks for the same.
    """
    return dict(shared_context_attributes())


def shared_context_attributes() -> dict[str, Any]:
    """:func:`temporal_context_attributes` itself, shared: read it, never change it."""
    run = run_context()
    return run.attributes if run is not None else {}


class RunContext:
    """Where spans are made (a workflow run or an activity attempt), worked out once.

    ``attributes``: its ``temporal.*`` correlation attributes; ``redacted``: the same
    with secrets redacted (a workflow id is the sender's text), for spans that are
    redacted attribute by attribute; ``scope``: the run its span ids belong to
    (telemetry.run_ids); ``in_workflow``: made in a workflow (not an activity);
    ``remote``: a workflow's Agents SDK ids that came in a header → the scope of
    their run (telemetry.run_ids.remote_parents_of), None in an activity;
    ``encoded``: ``redacted`` as OTLP span attributes (telemetry.wire).
    """

    __slots__ = ("attributes", "encoded", "in_workflow", "info", "redacted", "remote", "scope")

    def __init__(self, info: Any, in_workflow: bool) -> None:
        self.info = info
        self.in_workflow = in_workflow
        self.attributes = _context_attributes(info)
        self.redacted = {**self.attributes, **secret_changes(self.attributes)}
        self.encoded = wire.span_attributes(self.redacted)
        self.scope = str(info.run_id if in_workflow else info.workflow_run_id or "")
        # A workflow's Agents SDK ids that came in a header (telemetry.run_ids).
        instance = workflow.instance() if in_workflow else None
        self.remote = remote_parents_of(instance) if instance is not None else None


def run_context() -> RunContext | None:
    """The :class:`RunContext` of the workflow run or activity attempt this code is in."""
    # A workflow runs on its own event loop (its instance): once found, its context
    # is kept in the context variables of the task asking, keyed by that loop, so
    # the next span there costs a lookup, not workflow.info() through every
    # interceptor. A weak reference: a context that outlives the run keeps nothing.
    try:
        loop: Any = get_running_loop()
    except RuntimeError:
        loop = None
    known = _WORKFLOW_RUN.get()
    if known is not None and loop is not None and known[0]() is loop:
        return known[1]
    if workflow.in_workflow():
        info: Any = workflow.info()
        in_workflow = True
    elif activity.in_activity():
        info = activity.info()
        in_workflow = False
    else:
        return None
    key = id(info)
    cached = _CONTEXT_CACHE.get(key)
    if cached is None or cached.info is not info or (in_workflow and cached.remote is None):
        if len(_CONTEXT_CACHE) >= 4096:
            _CONTEXT_CACHE.clear()
        cached = _CONTEXT_CACHE[key] = RunContext(info, in_workflow)
    if in_workflow and loop is not None and cached.remote is not None:
        _WORKFLOW_RUN.set((weakref.ref(loop), cached))
    return cached


_WORKFLOW_RUN: ContextVar[tuple[Callable[[], Any], RunContext] | None] = ContextVar(
    "loomview_workflow_run", default=None
)


# id(workflow or activity Info) → its RunContext; the context keeps the Info, so
# its id cannot be reused while the entry lives.
_CONTEXT_CACHE: dict[int, RunContext] = {}


def _context_attributes(info: Any) -> dict[str, Any]:
    if type(info) is workflow.Info or isinstance(info, workflow.Info):
        found = {
            vocab.WORKFLOW_ID: info.workflow_id,
            vocab.RUN_ID: info.run_id,
            vocab.WORKFLOW_TYPE: info.workflow_type,
            vocab.NAMESPACE: info.namespace,
            vocab.TASK_QUEUE: info.task_queue,
        }
        if info.parent is not None:
            found[vocab.PARENT_WORKFLOW_ID] = info.parent.workflow_id
            found[vocab.PARENT_RUN_ID] = info.parent.run_id
        if info.continued_run_id:
            found[vocab.CONTINUED_RUN_ID] = info.continued_run_id
        return found
    return {  # an activity.Info
        vocab.WORKFLOW_ID: info.workflow_id or "",
        vocab.RUN_ID: info.workflow_run_id or "",
        vocab.WORKFLOW_TYPE: info.workflow_type or "",
        vocab.NAMESPACE: info.workflow_namespace or info.namespace,
        vocab.TASK_QUEUE: info.task_queue,
        vocab.ACTIVITY_ID: info.activity_id,
        vocab.ACTIVITY_TYPE: info.activity_type,
        vocab.ACTIVITY_ATTEMPT: info.attempt,
    }


def _messages(items: Any) -> list[dict[str, Any]]:
    """Normalize model input/output items into chat-like messages for GenAI attributes."""
    # Exact types first: a span may be converted in a workflow's sandbox, where
    # every isinstance() (against an ABC above all) is a chain of Python calls.
    if items is None:
        return []
    shape = type(items)
    if shape is str or (shape is not list and isinstance(items, str)):
        return [{"role": "user", "content": items}]
    if shape is not list and shape is not tuple and not isinstance(items, Sequence):
        items = [items]
    messages: list[dict[str, Any]] = []
    for raw in items:
        item = raw if type(raw) is dict or isinstance(raw, Mapping) else _jsonable(raw)
        if type(item) is not dict and not isinstance(item, Mapping):
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
            if type(content) is list or isinstance(content, list):
                content = "".join(
                    str(part.get("text", ""))
                    if type(part) is dict or isinstance(part, Mapping)
                    else str(part)
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
        vocab.GEN_AI_INPUT_TOKENS: prompt,
        vocab.GEN_AI_OUTPUT_TOKENS: completion,
        vocab.OI_PROMPT_TOKENS: prompt,
        vocab.OI_COMPLETION_TOKENS: completion,
        vocab.OI_TOTAL_TOKENS: prompt + completion,
    }


def _agent(data: AgentSpanData, attrs: dict[str, Any]) -> str:
    attrs[vocab.GEN_AI_AGENT] = data.name
    attrs[vocab.AGENTS_AGENT] = data.name
    attrs[vocab.OI_GRAPH_NODE] = data.name
    attrs[vocab.AGENTS_AGENT_TOOLS] = list(data.tools or [])
    attrs[vocab.AGENTS_AGENT_HANDOFFS] = list(data.handoffs or [])
    if data.output_type:
        attrs[vocab.AGENTS_AGENT_OUTPUT_TYPE] = data.output_type
    return f"invoke_agent {data.name}"


def _model_call(
    attrs: dict[str, Any], model: str, inputs: list[Any], outputs: list[Any], usage: Any
) -> None:
    """What a generation and a response span both say: model, messages (each encoded
    once, in the GenAI and OpenInference forms) and usage."""
    inputs_json, outputs_json = to_json(inputs), to_json(outputs)
    attrs.update(
        {
            vocab.GEN_AI_REQUEST_MODEL: model,
            vocab.GEN_AI_RESPONSE_MODEL: model,
            vocab.OI_MODEL: model,
            vocab.GEN_AI_INPUT_MESSAGES: inputs_json,
            vocab.GEN_AI_OUTPUT_MESSAGES: outputs_json,
            vocab.OI_INPUT: inputs_json,
            vocab.OI_OUTPUT: outputs_json,
            **_flatten_messages(vocab.OI_INPUT_MESSAGES, inputs),
            **_flatten_messages(vocab.OI_OUTPUT_MESSAGES, outputs),
            **_usage_attributes(usage),
        }
    )


def _generation(data: GenerationSpanData, attrs: dict[str, Any]) -> str:
    model = data.model or "unknown"
    _model_call(attrs, model, _messages(data.input), _messages(data.output), data.usage)
    attrs[vocab.OI_INPUT_MIME] = "application/json"
    attrs[vocab.OI_OUTPUT_MIME] = "application/json"
    if data.model_config:
        attrs[vocab.OI_INVOCATION_PARAMETERS] = data_json(data.model_config)
    return f"chat {model}"


def _response(data: ResponseSpanData, attrs: dict[str, Any]) -> str:
    response = data.response
    model = str(getattr(response, "model", None) or "unknown")
    usage = getattr(response, "usage", None)
    outputs = _messages(list(getattr(response, "output", None) or []))
    _model_call(
        attrs, model, _messages(data.input), outputs,
        _jsonable(usage) if usage is not None else data.usage,
    )  # fmt: skip
    if response is not None:
        attrs[vocab.GEN_AI_RESPONSE_ID] = str(response.id)
    return f"chat {model}"


def _function(data: FunctionSpanData, attrs: dict[str, Any]) -> str:
    arguments = to_json(data.input or "")
    result = to_json(data.output if data.output is not None else "")
    attrs[vocab.GEN_AI_TOOL_NAME] = data.name
    attrs[vocab.OI_TOOL_NAME] = data.name
    attrs[vocab.GEN_AI_TOOL_ARGUMENTS] = arguments
    attrs[vocab.GEN_AI_TOOL_RESULT] = result
    attrs[vocab.OI_INPUT] = arguments
    attrs[vocab.OI_OUTPUT] = result
    if data.mcp_data:
        attrs[vocab.AGENTS_FUNCTION_MCP_DATA] = data_json(data.mcp_data)
    return f"execute_tool {data.name}"


def _handoff(data: HandoffSpanData, attrs: dict[str, Any]) -> str:
    attrs[vocab.AGENTS_HANDOFF_FROM] = data.from_agent or ""
    attrs[vocab.AGENTS_HANDOFF_TO] = data.to_agent or ""
    attrs[vocab.GEN_AI_AGENT] = data.from_agent or ""
    return f"handoff {data.from_agent} → {data.to_agent}"


def _guardrail(data: GuardrailSpanData, attrs: dict[str, Any]) -> str:
    attrs[vocab.AGENTS_GUARDRAIL_NAME] = data.name
    attrs[vocab.AGENTS_GUARDRAIL_TRIGGERED] = data.triggered
    return f"guardrail {data.name}"


def _mcp_list_tools(data: MCPListToolsSpanData, attrs: dict[str, Any]) -> str:
    attrs[vocab.AGENTS_MCP_SERVER] = data.server or ""
    attrs[vocab.AGENTS_MCP_TOOLS] = list(data.result or [])
    return f"mcp list_tools {data.server}"


def _custom(data: CustomSpanData, attrs: dict[str, Any]) -> str:
    attrs[vocab.AGENTS_CUSTOM_NAME] = data.name
    attrs[vocab.AGENTS_CUSTOM_DATA] = data_json(data.data or {})
    for key, value in (data.data or {}).items():
        kind = type(value)
        if kind in _SCALARS or (kind not in _CONTAINERS and isinstance(value, _SCALAR_TYPES)):
            attrs[f"{vocab.AGENTS_CUSTOM_PREFIX}{key}"] = value
    return data.name or "custom"


def _other(data: Any, attrs: dict[str, Any]) -> str:
    exported = data.export() if hasattr(data, "export") else {}
    attrs[vocab.AGENTS_DATA] = data_json(exported)
    return str(exported.get("name") or attrs[vocab.AGENTS_SPAN_TYPE])


_SCALARS = frozenset((str, int, float, bool))
_SCALAR_TYPES = (str, int, float, bool)
_CONTAINERS = frozenset((dict, list, tuple, type(None)))
_Namer = Callable[[Any, dict[str, Any]], str]
# Span data class → what names it and fills its attributes. Looked up by the exact
# class (in a workflow's sandbox every isinstance() is a Python-level call); a
# subclass finds its nearest registered base once, and is remembered.
_NAMERS: dict[type, _Namer] = {
    AgentSpanData: _agent,
    GenerationSpanData: _generation,
    ResponseSpanData: _response,
    FunctionSpanData: _function,
    HandoffSpanData: _handoff,
    GuardrailSpanData: _guardrail,
    MCPListToolsSpanData: _mcp_list_tools,
    CustomSpanData: _custom,
}


def _namer(kind: type) -> _Namer:
    namer = _NAMERS.get(kind)
    if namer is None:
        namer = next((_NAMERS[base] for base in kind.__mro__ if base in _NAMERS), _other)
        if len(_NAMERS) < 256:
            _NAMERS[kind] = namer
    return namer


def span_name_and_attributes(data: Any) -> tuple[str, dict[str, Any]]:
    """The OTel name and type-specific attributes of one Agents span's data."""
    kind = getattr(data, "type", "custom")
    oi_kind, operation = vocab.AGENTS_SPAN_KINDS.get(kind, ("CHAIN", None))
    attrs: dict[str, Any] = {vocab.AGENTS_SPAN_TYPE: kind, vocab.OI_SPAN_KIND: oi_kind}
    if operation:
        attrs[vocab.GEN_AI_OPERATION] = operation
    return _namer(type(data))(data, attrs), attrs


class _NoKey(Exception):
    """Span data with no content key: a value of another type, or too much text."""


def _frozen(value: Any, budget: list[int]) -> Any:
    """``value`` (JSON-like data) as a hashable key that tells apart what converts
    differently (``1``, ``1.0`` and ``True``; a list and a tuple); :class:`_NoKey`
    for anything else, or once ``budget[0]`` characters of text are spent."""
    kind = type(value)
    if kind is str:
        budget[0] -= len(value)
        if budget[0] < 0:
            raise _NoKey
        return value
    if value is None:
        return None
    if kind is int or kind is float or kind is bool:
        return (kind, value)
    if kind is list or kind is tuple:
        return (kind, *[_frozen(item, budget) for item in value])
    if kind is dict:
        out: list[Any] = [dict]
        for key, item in value.items():
            out.append(_frozen(key, budget))
            out.append(_frozen(item, budget))
        return tuple(out)
    raise _NoKey


def _content_key(data: Any) -> Any:
    """What a span's name and its own attributes are made of (its type and the data
    :func:`span_name_and_attributes` reads), as a key; None when there is none."""
    kind = type(data)
    reads = _CONTENT.get(kind)
    if reads is None:
        if _namer(kind) is not _other:
            return None
        reads = _exported
    try:
        return (kind, _frozen(reads(data), [_KEY_CHARS]))
    except _NoKey:
        return None


_KEY_CHARS = 2048
# Span data class → what its namer reads (generations and responses, whose
# messages differ from one model call to the next, are converted every time).
_CONTENT: dict[type, Callable[[Any], Any]] = {
    AgentSpanData: lambda data: (data.name, data.tools, data.handoffs, data.output_type),
    FunctionSpanData: lambda data: (data.name, data.input, data.output, data.mcp_data),
    HandoffSpanData: lambda data: (data.from_agent, data.to_agent),
    GuardrailSpanData: lambda data: (data.name, data.triggered),
    MCPListToolsSpanData: lambda data: (data.server, data.result),
    CustomSpanData: lambda data: (data.name, data.data),
}


def _exported(data: Any) -> Any:
    return data.export() if hasattr(data, "export") else None


class _Part:
    """A span's name and own attributes (:func:`span_name_and_attributes`), redacted
    and encoded (:func:`telemetry.wire.redacted_attributes`) once for every span
    with the same content: an agent, handoff or Temporal span comes back in every
    run. ``attributes`` is shared: copy it before changing it."""

    __slots__ = ("attributes", "encoded", "name", "redacted_name")

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self.name = name
        self.redacted_name = redact_text(name)
        self.attributes = attributes
        self.encoded = wire.redacted_attributes(attributes)


def _part_of(data: Any) -> _Part:
    key = _content_key(data)
    if key is not None:
        part = _PARTS.get(key)
        if part is not None:
            return part
    name, attributes = span_name_and_attributes(data)
    part = _Part(name, attributes)
    if key is not None:
        if len(_PARTS) >= 1024:
            _PARTS.clear()
        _PARTS[key] = part
    return part


# Content key → its _Part; emptied when the redaction rules change.
_PARTS: dict[Any, _Part] = derived_cache({})


# Ended spans converted together (see OtelBridgeProcessor._convert_ended): 16 was
# as cheap a span as 32 or 64, and its spans are gone before a young collection
# would promote them.
_BATCH = 16

# An ended Agents span: the span, the run it ended in, the OTel span current there
# and, if the span has no end time of its own, the time it ended.
_Ended = tuple[Span[Any], RunContext | None, SpanContext, int]


class OtelBridgeProcessor(TracingProcessor):
    """An Agents SDK tracing processor that hands OTel spans, redacted, to an OTel span processor.

    The spans are redacted here (:mod:`telemetry.redact`), so ``span_processor``
    can be the exporters' own: :func:`telemetry.otel.configure_tracing` passes
    the batch processors, not the redacting processor Temporal's spans go through.
    """

    def __init__(
        self, span_processor: SpanProcessor, resource: Resource, openai_traces: bool = False
    ) -> None:
        self._processor = span_processor
        self._resource = resource
        # Loomview's own batch processors, when they are all there is: spans are
        # then written straight to their queues as OTLP bytes (telemetry.wire),
        # with no ReadableSpan, SpanContexts or processor chain in between.
        self._queues = wire_processors(span_processor)
        self._group = wire.group_of(resource, SCOPE)
        # The same spans also go to OpenAI's Traces dashboard: say so on each span,
        # so the dashboard links a run to its trace there.
        self._openai_traces = openai_traces
        self._lock = threading.Lock()
        self._trace_starts: dict[str, int] = {}
        self._first_span_start: dict[str, int] = {}
        # Ended spans not yet converted (see on_span_end), with where they ended.
        self._ended: collections.deque[_Ended] = collections.deque()
        self._converting = threading.Lock()
        self._batch = 1
        if self._queues is not None:
            self._batch = _BATCH
            for queue in self._queues:
                queue.add_source(self._convert_ended)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=self._after_fork)

    # -- ids and context -------------------------------------------------------
    def _otel_trace_id(
        self,
        current: SpanContext,
        agents_trace_id: str,
        scope: str,
        remote: Mapping[str, str] | None,
    ) -> int:
        """The trace of ``current`` (the OTel span current where the Agents span
        ended), else one derived from the Agents trace id."""
        if current.is_valid:
            return current.trace_id
        return trace_id_for(agents_trace_id, _remote_or_own(remote, agents_trace_id, scope))

    def _context(self, trace_id: int, span_id: int) -> SpanContext:
        return SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)

    def _emit(
        self,
        *,
        name: str,
        trace_id: int,
        span_id: int,
        parent: SpanContext | tuple[int, int, bool] | None,
        start: int,
        end: int,
        attributes: dict[str, Any],
        run: RunContext | None,
        error: Mapping[str, Any] | None,
        own: _Part | None = None,
    ) -> None:
        """Hand the span to the exporters. Its attributes: ``own``'s (its data's,
        already redacted and encoded), then ``attributes`` (redacted here, in place),
        then the correlation attributes of ``run`` (already redacted)."""
        status = _UNSET
        if error:
            message = str(error.get("message") or "error")
            detail = (
                (error.get("data") or {}).get("error")
                if type(error.get("data")) is dict or isinstance(error.get("data"), Mapping)
                else None
            )
            if detail and str(detail) not in message:
                # "Error in agent run" says little; the SDK keeps the cause in data.
                message = f"{message}: {detail}"
            message = redact_text(message)  # before clipping, which could cut a key short
            status = Status(StatusCode.ERROR, message)
            attributes[vocab.ERROR_TYPE] = message[:200]
            if error.get("data"):
                attributes[vocab.AGENTS_ERROR_DATA] = data_json(error["data"])
        if self._openai_traces:
            attributes[vocab.AGENTS_OPENAI_TRACES] = True
        end = max(end, start)
        queues = self._queues
        if queues is not None and (
            run is None
            or (
                run.redacted.keys().isdisjoint(attributes)
                and (own is None or run.redacted.keys().isdisjoint(own.attributes))
            )
        ):
            # Redacted and encoded in one pass; the run's attributes were once for all
            # its spans. The same bytes as the span below would be encoded to.
            encoded = wire.redacted_attributes(attributes)
            if own is not None:
                encoded = own.encoded + encoded
            if run is not None:
                encoded += run.encoded
            try:
                data = wire.span_bytes(
                    trace_id,
                    span_id,
                    parent,
                    own.redacted_name if own is not None else redact_text(name),
                    start,
                    end,
                    encoded,
                    status,
                )
            except Exception:  # a span that cannot be encoded is lost, never the application
                logger.exception("could not encode span %r", name)
                return
            record = wire.record_of(self._group, data)
            for queue in queues:
                queue.enqueue(record)
            return
        if own is not None:
            attributes = {**own.attributes, **attributes}
        if None in attributes.values():
            attributes = {key: value for key, value in attributes.items() if value is not None}
        # Redacted here, once, on the span's only copy: the spans go straight to the
        # exporters. The run's attributes were redacted once for all its spans.
        changes = secret_changes(attributes)
        if changes:
            attributes.update(changes)
        if run is not None:
            attributes.update(run.redacted)
        # A plain tuple is a local parent, as span_bytes reads it.
        context = (
            self._context(parent[0], parent[1])
            if type(parent) is tuple
            else cast("SpanContext | None", parent)
        )
        span = ReadableSpan(
            name=redact_text(name),
            context=self._context(trace_id, span_id),
            parent=context,
            resource=self._resource,
            attributes=attributes,
            events=(),
            kind=SpanKind.INTERNAL,
            status=status,
            start_time=start,
            end_time=end,
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
        self._convert_ended()  # its spans first: the trace starts at its earliest
        with self._lock:
            start = self._trace_starts.pop(trace.trace_id, None)
            first_child = self._first_span_start.pop(trace.trace_id, None)
        if start is None:
            # The trace began while its workflow was being replayed (e.g. on a new
            # worker after a crash): its start is the earliest child we saw, if any.
            start = first_child if first_child is not None else end
        exported = trace.export() or {}
        current = current_span_context()
        attributes: dict[str, Any] = {
            vocab.AGENTS_SPAN_TYPE: "trace",
            vocab.OI_SPAN_KIND: "CHAIN",
            vocab.AGENTS_TRACE_ID: trace.trace_id,
            vocab.AGENTS_TRACE_NAME: trace.name,
        }
        if exported.get("group_id"):
            attributes[vocab.AGENTS_TRACE_GROUP_ID] = str(exported["group_id"])
            attributes[vocab.OI_SESSION] = str(exported["group_id"])
        if exported.get("metadata"):
            attributes[vocab.AGENTS_TRACE_METADATA] = data_json(exported["metadata"])
        run = run_context()
        scope = run.scope if run is not None else ""
        remote = run.remote if run is not None else None
        self._emit(
            name=trace.name,
            trace_id=self._otel_trace_id(current, trace.trace_id, scope, remote),
            span_id=span_id_for(trace.trace_id, scope),
            parent=current if current.is_valid else None,
            start=start,
            end=end,
            attributes=attributes,
            run=run,
            error=None,
        )

    def on_span_start(self, span: Span[Any]) -> None:
        return None

    def on_span_end(self, span: Span[Any]) -> None:
        data = span.span_data
        if type(data) is CustomSpanData and not data.name:
            return  # a placeholder the Temporal plugin makes for a propagated parent
        # What depends on where the span ended is taken now; the rest waits for a
        # few more spans, converted one after the other (see _convert_ended).
        ended = self._ended
        ended.append(
            (
                span,
                run_context(),
                current_span_context(),
                _now_ns() if not span.ended_at else 0,
            )
        )
        if len(ended) >= self._batch:
            self._convert_ended()

    def _after_fork(self) -> None:
        """A forked child converts none of its parent's spans."""
        self._ended.clear()
        self._converting = threading.Lock()

    def _convert_ended(self) -> None:
        """Convert the spans that ended since the last call, oldest first.

        Converted together, a few at a time, a span costs about half the CPU it
        does alone between the workflow code around it, whose work leaves the
        bridge's code and caches cold (bench/README.md, issue 16). A few, and
        soon: a span kept longer outlives the young collections and brings the
        next full collection sooner. The span processors' export thread calls this
        too (:meth:`telemetry.otlp_http.WireBatchSpanProcessor.add_source`), so a
        span never waits for the next one longer than the export's schedule.
        """
        ended = self._ended
        with self._converting:  # one thread at a time: spans stay in their order
            while ended:
                span, run, current, now = ended.popleft()
                try:
                    self._convert(span, run, current, now)
                except Exception:  # one span's problem is never the others'
                    logger.exception("could not convert an Agents span")

    def _convert(
        self, span: Span[Any], run: RunContext | None, current: SpanContext, now: int
    ) -> None:
        data = span.span_data
        part: _Part | None = None
        attributes: dict[str, Any]
        try:
            if self._queues is not None:  # written as bytes: its data's encoded once
                part = _part_of(data)
                name, attributes = part.name, {}
            else:
                name, attributes = span_name_and_attributes(data)
        except Exception:
            logger.exception(
                "could not convert an Agents span of type %s", getattr(data, "type", "?")
            )
            return
        end = _iso_to_ns(span.ended_at) or now
        start = _iso_to_ns(span.started_at) or end
        trace_id_agents = span.trace_id
        if trace_id_agents not in self._trace_starts:
            # Its trace began while its workflow was replayed: the trace will start at
            # its earliest span.
            with self._lock:
                first = self._first_span_start.get(trace_id_agents)
                if first is None or start < first:
                    self._first_span_start[trace_id_agents] = start
        if run is None:
            scope, remote = "", None
        else:
            scope, remote = run.scope, run.remote
        trace_id = self._otel_trace_id(current, trace_id_agents, scope, remote)
        parent_id = span.parent_id
        parent_agents_id = parent_id or trace_id_agents
        attributes[vocab.AGENTS_TRACE_ID] = trace_id_agents
        attributes[vocab.AGENTS_SPAN_ID] = span.span_id
        attributes[vocab.AGENTS_PARENT_ID] = parent_id or ""
        self._emit(
            name=name,
            trace_id=trace_id,
            span_id=span_id_for(span.span_id, scope),
            # What span_bytes reads of a SpanContext: trace id, span id, is remote.
            parent=(
                trace_id,
                span_id_for(parent_agents_id, _remote_or_own(remote, parent_agents_id, scope)),
                False,
            ),
            start=start,
            end=end,
            attributes=attributes,
            run=run,
            error=span.error,
            own=part,
        )

    def shutdown(self) -> None:
        self._convert_ended()
        self._processor.shutdown()

    def force_flush(self) -> None:
        self._convert_ended()
        self._processor.force_flush()

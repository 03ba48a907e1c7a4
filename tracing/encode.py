"""Stored span rows back into OTLP: the other direction of tracing.otlp.

Pure functions, no transport. A row rebuilt here keeps what the receiver was
sent: the same trace, span and parent ids, times, kind, status, attributes,
events, links, resource and scope, so a collector that gets a span twice (the
forwarder delivers at least once) sees the same span. What is added on the
way out, so that any backend reads every span well whichever instrumentation
produced it:

- the ``temporal.*`` correlation attributes for spans that got them from an
  ancestor or from the run's history (stock instrumentation spans), so
  backends can filter by workflow id;
- an OpenInference span kind on every span (Temporal's own included), the
  current GenAI attributes (``gen_ai.operation.name``, ``gen_ai.agent.name``,
  ``gen_ai.provider.name``, ``gen_ai.request.model``, ``gen_ai.usage.*``) and
  their OpenInference equivalents where the span says them another way;
- ``session.id`` and ``gen_ai.conversation.id`` set to the workflow id, so a
  run is one session in Phoenix and Langfuse;
- the collector's project as the ``openinference.project.name`` resource
  attribute;
- redaction, because an app that is not the bundled worker may have sent
  secrets in the clear.

Nothing the span said itself is overwritten.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from telemetry import vocab
from telemetry.redact import (
    REDACTED,
    is_secret_name,
    redact_attributes,
    redact_text,
    redact_value,
)

_INT64 = (-(2**63), 2**63 - 1)
_REDACTED_VALUE = AnyValue(string_value=REDACTED)
# (column, every spelling of its attribute; the first is added when the span
# carries none of them)
_CORRELATION = (
    ("workflow_id", vocab.WORKFLOW_ID_KEYS),
    ("run_id", vocab.RUN_ID_KEYS),
    ("activity_id", vocab.ACTIVITY_ID_KEYS),
    ("attempt", (vocab.ACTIVITY_ATTEMPT,)),
)


def any_value(value: Any) -> AnyValue:
    if value is None:
        return AnyValue()
    if value.__class__ is str:
        return AnyValue(string_value=value)
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list | tuple):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=key_values(value)))
    return AnyValue(string_value=str(value))


def key_values(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in attributes.items()]


def export_attributes(row: dict[str, Any]) -> list[KeyValue]:
    """The span's attributes, redacted, with its Temporal ids when it only inherited them."""
    attrs = row["attributes"]
    # One pass (redaction and encoding together): this is the forwarder's hot path.
    result = [
        KeyValue(
            key=key,
            value=_REDACTED_VALUE
            if is_secret_name(key)
            else AnyValue(string_value=redact_text(value))
            if value.__class__ is str
            else any_value(redact_value(value)),
        )
        for key, value in attrs.items()
    ]
    if row.get("workflow_id"):
        for column, names in _CORRELATION:
            value = row.get(column)
            if value not in (None, "") and not any(name in attrs for name in names):
                result.append(KeyValue(key=names[0], value=any_value(value)))
    for key, value in semantic_attributes(row).items():
        if key not in attrs:
            result.append(KeyValue(key=key, value=any_value(value)))
    return result


def semantic_attributes(row: dict[str, Any]) -> dict[str, Any]:
    """What every reader expects of this span, from what the store knows of it."""
    attrs = row["attributes"]
    kind = row.get("kind") or "other"
    openinference_kind, operation = vocab.EXPORT_KINDS.get(kind, vocab.EXPORT_DEFAULT_KIND)
    added: dict[str, Any] = {vocab.OI_SPAN_KIND: openinference_kind}
    if operation:
        added[vocab.GEN_AI_OPERATION] = operation
    if kind == "agent" and row.get("agent"):
        added[vocab.GEN_AI_AGENT] = row["agent"]
        added[vocab.OI_AGENT_NAME] = row["agent"]
    if kind in vocab.MODEL_KINDS:
        provider = next((attrs[k] for k in vocab.PROVIDER_KEYS if attrs.get(k)), None)
        # The Agents SDK speaks the OpenAI API (OpenAI or a compatible server).
        added[vocab.GEN_AI_PROVIDER] = provider or vocab.DEFAULT_PROVIDER
        added[vocab.OI_LLM_PROVIDER] = provider or vocab.DEFAULT_PROVIDER
        if row.get("model"):
            added[vocab.GEN_AI_REQUEST_MODEL] = row["model"]
            added[vocab.OI_MODEL] = row["model"]
        if row.get("tokens_in") is not None:
            added[vocab.GEN_AI_INPUT_TOKENS] = row["tokens_in"]
            added[vocab.OI_PROMPT_TOKENS] = row["tokens_in"]
        if row.get("tokens_out") is not None:
            added[vocab.GEN_AI_OUTPUT_TOKENS] = row["tokens_out"]
            added[vocab.OI_COMPLETION_TOKENS] = row["tokens_out"]
    if kind in ("function", "mcp_tools") and row.get("tool"):
        added[vocab.GEN_AI_TOOL_NAME] = row["tool"]
        added[vocab.OI_TOOL_NAME] = row["tool"]
    if row.get("workflow_id"):
        added[vocab.OI_SESSION] = row["workflow_id"]
        added[vocab.GEN_AI_CONVERSATION] = row["workflow_id"]
    return added


def _span(row: dict[str, Any]) -> Span:
    return Span(
        trace_id=bytes.fromhex(row["trace_id"]),
        span_id=bytes.fromhex(row["span_id"]),
        parent_span_id=bytes.fromhex(row["parent_span_id"]) if row["parent_span_id"] else b"",
        name=redact_text(row["name"]),
        kind=row["span_kind"],
        start_time_unix_nano=row["start_ns"],
        end_time_unix_nano=row["end_ns"],
        attributes=export_attributes(row),
        events=[
            Span.Event(
                name=redact_text(event.get("name", "")),
                time_unix_nano=event.get("time_ns", 0),
                attributes=key_values(redact_attributes(event.get("attributes"))),
            )
            for event in row["events"]
        ],
        links=[
            Span.Link(
                trace_id=bytes.fromhex(link["trace_id"]),
                span_id=bytes.fromhex(link["span_id"]),
                attributes=key_values(redact_attributes(link.get("attributes"))),
            )
            for link in row["links"]
        ],
        status=Status(
            code=row["status_code"],
            message=redact_text(row["status_message"]) if row["status_message"] else "",
        ),
    )


def request_from_rows(
    rows: Iterable[dict[str, Any]], project: str = ""
) -> ExportTraceServiceRequest:
    """One export request; spans grouped by resource, then by instrumentation scope.

    ``project``: the collector's project, sent as every resource's
    ``openinference.project.name``.
    """
    # A batch has a handful of distinct resources: compare dicts, don't serialize them.
    resources: list[dict[str, Any]] = []
    groups: list[dict[tuple[str, str, str], list[Span]]] = []
    scopes_seen: dict[tuple[str, str, str], InstrumentationScope] = {}
    for row in rows:
        resource = row["resource"]
        index = next((i for i, seen in enumerate(resources) if seen == resource), -1)
        if index < 0:
            index = len(resources)
            resources.append(resource)
            groups.append({})
        scope_attrs = row.get("scope_attributes") or {}
        key = (
            row["scope"] or "",
            row.get("scope_version") or "",
            json.dumps(scope_attrs, sort_keys=True, default=str) if scope_attrs else "",
        )
        if key not in scopes_seen:
            scopes_seen[key] = InstrumentationScope(
                name=key[0], version=key[1], attributes=key_values(redact_attributes(scope_attrs))
            )
        groups[index].setdefault(key, []).append(_span(row))
    request = ExportTraceServiceRequest()
    for resource, scopes in zip(resources, groups, strict=True):
        attributes = redact_attributes(resource)
        if project:
            attributes = {**attributes, vocab.OI_PROJECT: project}
        request.resource_spans.append(
            ResourceSpans(
                resource=Resource(attributes=key_values(attributes)),
                scope_spans=[
                    ScopeSpans(scope=scopes_seen[key], spans=spans) for key, spans in scopes.items()
                ],
            )
        )
    return request


def span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)


def _b64_to_hex(obj: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if key in obj:
            obj[key] = base64.b64decode(obj[key]).hex()


def to_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """OTLP/JSON: lowerCamelCase names, integer enums and hex ids, as the OTLP spec says."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                _b64_to_hex(span, "traceId", "spanId", "parentSpanId")
                for link in span.get("links", []):
                    _b64_to_hex(link, "traceId", "spanId")
    return document

"""OTLP/HTTP trace decoding: request bodies in, span rows out.

Pure functions, no HTTP and no Django, so the receiver view only deals with
transport. Both encodings decode into ``ExportTraceServiceRequest`` from
``opentelemetry-proto``: protobuf directly, OTLP/JSON through
``google.protobuf.json_format`` after turning the hex ids the OTLP spec uses in
JSON into the base64 that proto3's JSON mapping expects.

A row is a plain dict: ids as lowercase hex, times as integer nanoseconds,
attributes flattened to JSON-able values, plus the correlation keys Loomview
indexes (workflow/run/activity ids, normalized kind, model, agent, tool,
tokens). Spans that break the OTLP data model (bad ids, end before start) are
rejected one by one and counted, as ``partial_success`` reports them.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from telemetry import vocab

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = frozenset({PROTOBUF, JSON})


_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


class DecodeError(ValueError):
    """The body is not a valid OTLP trace export request."""


class BodyTooLarge(ValueError):
    """The body, or what it decompresses to, exceeds the configured limit."""


@dataclass
class DecodeResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def error_message(self) -> str:
        if not self.rejected:
            return ""
        shown = "; ".join(self.errors[:5])
        more = f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        return f"rejected {self.rejected} span(s): {shown}{more}"


def gunzip(body: bytes, max_bytes: int) -> bytes:
    """Decompress a gzip body, refusing to produce more than max_bytes."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise DecodeError(f"body is not valid gzip: {exc}") from None
    if len(data) > max_bytes or inflater.unconsumed_tail:
        raise BodyTooLarge(f"decompressed body exceeds {max_bytes} bytes")
    if not inflater.eof:
        raise DecodeError("body is not valid gzip: truncated stream")
    return data


def parse_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except ProtobufDecodeError as exc:
            raise DecodeError(
                f"body is not a valid protobuf ExportTraceServiceRequest: {exc}"
            ) from None
        return request
    if content_type == JSON:
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"body is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise DecodeError("body is not an OTLP/JSON ExportTraceServiceRequest object")
        _hex_ids_to_base64(document)
        try:
            json_format.ParseDict(document, request, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise DecodeError(
                f"body is not a valid OTLP/JSON ExportTraceServiceRequest: {exc}"
            ) from None
        return request
    raise DecodeError(f"unsupported content type {content_type!r}")


def decode(body: bytes, content_type: str) -> DecodeResult:
    return rows_from_request(parse_request(body, content_type))


def _items(obj: dict[str, Any], camel: str, snake: str) -> list[Any]:
    value = obj.get(camel, obj.get(snake))
    return value if isinstance(value, list) else []


def _hex_to_b64(obj: dict[str, Any], camel: str, snake: str) -> None:
    for key in (camel, snake):
        value = obj.get(key)
        if isinstance(value, str):
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                # Leave an empty id: the span is then rejected with a clear
                # reason instead of failing the whole request.
                raw = b""
            obj[key] = base64.b64encode(raw).decode()


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    for resource_spans in _items(document, "resourceSpans", "resource_spans"):
        if not isinstance(resource_spans, dict):
            continue
        for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
            if not isinstance(scope_spans, dict):
                continue
            for span in _items(scope_spans, "spans", "spans"):
                if not isinstance(span, dict):
                    continue
                _hex_to_b64(span, "traceId", "trace_id")
                _hex_to_b64(span, "spanId", "span_id")
                _hex_to_b64(span, "parentSpanId", "parent_span_id")
                for link in _items(span, "links", "links"):
                    if isinstance(link, dict):
                        _hex_to_b64(link, "traceId", "trace_id")
                        _hex_to_b64(link, "spanId", "span_id")


def any_value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, which)


def attributes(key_values: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for kv in key_values:
        kv_value: AnyValue = kv.value
        which = kv_value.WhichOneof("value")
        if which == "string_value":
            result[kv.key] = kv_value.string_value
        elif which is None:
            result[kv.key] = None
        elif which in ("int_value", "double_value", "bool_value"):
            result[kv.key] = getattr(kv_value, which)
        else:
            result[kv.key] = any_value(kv_value)
    return result


def _invalid(span: ProtoSpan) -> str | None:
    if len(span.trace_id) != 16 or span.trace_id == _ZERO_TRACE:
        return "trace_id must be 16 non-zero bytes"
    if len(span.span_id) != 8 or span.span_id == _ZERO_SPAN:
        return "span_id must be 8 non-zero bytes"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return "parent_span_id must be empty or 8 bytes"
    if span.end_time_unix_nano < span.start_time_unix_nano:
        return "end_time_unix_nano is before start_time_unix_nano"
    return None


def rows_from_request(request: ExportTraceServiceRequest) -> DecodeResult:
    result = DecodeResult()
    rows = result.rows
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        service = resource.get(vocab.SERVICE_NAME)
        service_name = service if isinstance(service, str) else ""
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                problem = _invalid(span)
                if problem is not None:
                    result.rejected += 1
                    result.errors.append(
                        f"span {binascii.hexlify(span.span_id).decode()}: {problem}"
                    )
                    continue
                rows.append(_row(span, resource, service_name, scope))
    return result


def _row(span: ProtoSpan, resource: dict[str, Any], service: str, scope: str) -> dict[str, Any]:
    attrs = attributes(span.attributes)
    parent = span.parent_span_id
    start = span.start_time_unix_nano
    end = span.end_time_unix_nano
    status = span.status
    row: dict[str, Any] = {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": "" if not parent or parent == _ZERO_SPAN else parent.hex(),
        "name": span.name,
        "span_kind": span.kind,
        "start_ns": start,
        "end_ns": end,
        "duration_ns": end - start,
        "status_code": status.code,
        "status_message": status.message,
        "service_name": service,
        "scope": scope,
        "attributes": attrs,
        "events": [
            {"name": e.name, "time_ns": e.time_unix_nano, "attributes": attributes(e.attributes)}
            for e in span.events
        ]
        if span.events
        else [],
        "links": [
            {
                "trace_id": link.trace_id.hex(),
                "span_id": link.span_id.hex(),
                "attributes": attributes(link.attributes),
            }
            for link in span.links
        ]
        if span.links
        else [],
        "resource": resource,
    }
    row.update(correlation_keys(attrs, span.name))
    return row


def _text(value: Any) -> str:
    return "" if not value else value if value.__class__ is str else str(value)


def _int(value: Any) -> int | None:
    if value is None or value.__class__ is bool:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def normalize_kind(attrs: dict[str, Any], name: str) -> str:
    agents_type = attrs.get(vocab.AGENTS_SPAN_TYPE)
    if agents_type:
        kind = str(agents_type).lower()
        return kind if kind in vocab.KINDS else "other"
    openinference = attrs.get(vocab.OI_SPAN_KIND)
    if openinference:
        return vocab.OPENINFERENCE_KINDS.get(str(openinference).upper(), "other")
    operation = attrs.get(vocab.GEN_AI_OPERATION)
    if operation:
        return vocab.GEN_AI_OPERATIONS.get(str(operation).lower(), "other")
    prefix, colon, _ = name.partition(":")
    if colon and prefix in vocab.TEMPORAL_SPAN_PREFIXES:
        return "temporal"
    return "other"


def workflow_type(attrs: dict[str, Any], name: str) -> str:
    value = attrs.get(vocab.WORKFLOW_TYPE)
    if value:
        return str(value)
    prefix, colon, rest = name.partition(":")
    if colon and prefix in vocab.WORKFLOW_SPAN_PREFIXES:
        return rest
    return ""


def first(attrs: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first of keys that attrs has and that is not empty."""
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


def correlation_keys(attrs: dict[str, Any], name: str) -> dict[str, Any]:
    # Hot path (every span): plain dict lookups, no helper calls per key.
    get = attrs.get
    kind = normalize_kind(attrs, name)
    agent = first(attrs, vocab.AGENT_KEYS)
    if not agent and str(get(vocab.OI_SPAN_KIND, "")).upper() == "AGENT":
        agent = get(vocab.OI_GRAPH_NODE) or name
    tokens_in = first(attrs, vocab.INPUT_TOKEN_KEYS)
    tokens_out = first(attrs, vocab.OUTPUT_TOKEN_KEYS)
    return {
        "workflow_id": _text(first(attrs, vocab.WORKFLOW_ID_KEYS)),
        "run_id": _text(first(attrs, vocab.RUN_ID_KEYS)),
        "activity_id": _text(first(attrs, vocab.ACTIVITY_ID_KEYS)),
        "attempt": _int(get(vocab.ACTIVITY_ATTEMPT)),
        "kind": kind,
        "model": _text(first(attrs, vocab.MODEL_KEYS)),
        "agent": _text(agent),
        "tool": _text(first(attrs, vocab.TOOL_KEYS)),
        "tokens_in": _int(tokens_in),
        "tokens_out": _int(tokens_out),
        "workflow_type": workflow_type(attrs, name),
        "inherited": False,
    }


def encode_response(rejected: int, message: str, content_type: str) -> bytes:
    """An ExportTraceServiceResponse, with partial_success when spans were rejected."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return _encode(response, content_type)


def encode_status(code: int, message: str, content_type: str) -> bytes:
    """A google.rpc.Status, the error body OTLP/HTTP prescribes."""
    return _encode(Status(code=code, message=message), content_type)


def _encode(message: Any, content_type: str) -> bytes:
    if content_type == PROTOBUF:
        return bytes(message.SerializeToString())
    return json_format.MessageToJson(message, indent=None).encode()

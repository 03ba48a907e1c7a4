"""OTLP/HTTP trace decoding: request bodies in, span rows out.

Pure functions, no HTTP and no Django, so the receiver view only deals with
transport. Both encodings decode into ``ExportTraceServiceRequest`` from
``opentelemetry-proto``: protobuf directly, OTLP/JSON through
``google.protobuf.json_format`` after turning the hex ids the OTLP spec uses in
JSON into the base64 that proto3's JSON mapping expects.

A row is a plain dict: ids as lowercase hex, times as integer nanoseconds,
attributes flattened to JSON-able values, plus the correlation keys Loomview
indexes (workflow/run/activity ids, normalized kind, model, agent, tool,
tokens). Spans that break the OTLP data model (bad ids, end before start) or
that the store cannot hold (times beyond int64 or far in the future, ids longer
than their columns, attempt and token counts that are not plausible numbers)
are rejected one by one and counted, as ``partial_success`` reports them.
Descriptive text (names, models, agents, status messages, long attribute
values) is truncated with a visible marker instead: one sender must not be
able to make a page huge. The limits are the module constants below; the
README's "The receiver" section lists them.

Everything is redacted on the way in with the worker's rules
(telemetry.redact): apps other than the bundled worker send secrets in the
clear, and what is never stored cannot leak from a page, the API or an export.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
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

from telemetry import redact, vocab
from telemetry.redact import REDACTED, is_secret_name, redact_text

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = frozenset({PROTOBUF, JSON})


_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)

# -- limits (see the README's "The receiver") -----------------------------------
# Times are stored in signed 64-bit columns; a span may end at most this far
# ahead of the receiver's clock (clock skew), so no sender pins a run at the
# top of the runs list for centuries.
MAX_NS = 2**63 - 1
FUTURE_SKEW_NS = 24 * 3600 * 10**9
# Correlation ids are keys: a truncated id would join the wrong run, so a
# longer one rejects the span. Temporal's own default limit for ids is 1000.
MAX_ID_CHARS = {"workflow_id": 1000, "run_id": 255, "activity_id": 255}
# Temporal numbers attempts with an int32.
MAX_ATTEMPT = 2**31 - 1
# Tokens of one span: no model call comes near a billion.
MAX_TOKENS = 10**9
# OTLP enums Loomview stores in small integer columns.
MAX_SPAN_KIND = 5
MAX_STATUS_CODE = 2
# Text is truncated, with TRUNCATED at the end, beyond these lengths.
MAX_NAME_CHARS = 1000
MAX_LABEL_CHARS = 255  # model, agent, tool, service, scope, workflow type
MAX_MESSAGE_CHARS = 4000  # status message
MAX_KEY_CHARS = 255  # attribute keys
MAX_VALUE_CHARS = 256 * 1024  # one string attribute value
TRUNCATED = "…[truncated]"


class DecodeError(ValueError):
    """The body is not a valid OTLP trace export request."""


class BodyTooLarge(ValueError):
    """The body, or what it decompresses to, exceeds the configured limit."""


class InvalidSpan(ValueError):
    """One span the store cannot hold; the rest of the request goes on."""


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
    """Decompress a gzip body, every member of it, refusing to produce more than max_bytes."""
    parts: list[bytes] = []
    total = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits=31)
        try:
            # max_length is at least 1 here: 0 would mean "no limit".
            data = inflater.decompress(rest, max_bytes + 1 - total)
        except zlib.error as exc:
            raise DecodeError(f"body is not valid gzip: {exc}") from None
        total += len(data)
        if total > max_bytes or inflater.unconsumed_tail:
            raise BodyTooLarge(f"decompressed body exceeds {max_bytes} bytes")
        if not inflater.eof:
            raise DecodeError("body is not valid gzip: truncated stream")
        parts.append(data)
        # Concatenated gzip members are one stream (RFC 1952, section 2.2).
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)


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
        except RecursionError:
            raise DecodeError("body is not valid OTLP/JSON: nested too deeply") from None
        if not isinstance(document, dict):
            raise DecodeError("body is not an OTLP/JSON ExportTraceServiceRequest object")
        _hex_ids_to_base64(document)
        try:
            json_format.ParseDict(document, request, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise DecodeError(
                f"body is not a valid OTLP/JSON ExportTraceServiceRequest: {exc}"
            ) from None
        except RecursionError:
            raise DecodeError("body is not valid OTLP/JSON: nested too deeply") from None
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


def truncate(text: str, limit: int) -> str:
    """text cut to at most limit characters, the cut marked."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATED)] + TRUNCATED


def any_value(value: AnyValue) -> Any:
    # Nesting is bounded by the protobuf decoder (upb's depth limit, and
    # json_format's for OTLP/JSON), so this recursion is too.
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "string_value":
        text = redact_text(value.string_value)
        return text if len(text) <= MAX_VALUE_CHARS else truncate(text, MAX_VALUE_CHARS)
    if which == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return truncate(base64.b64encode(value.bytes_value).decode(), MAX_VALUE_CHARS)
    number = getattr(value, which)
    if which == "double_value" and not math.isfinite(number):
        # JSON has no Infinity or NaN: keep them as text, which every reader can store.
        return str(number)
    return number


# Attribute keys known to be short enough and not secret-looking: a handful of
# distinct keys make up nearly every span, so each is judged once.
_CLEAN_KEYS: set[str] = set()
_MAX_KEYS_CACHED = 50_000


def _judge_key(key: str) -> tuple[str, bool]:
    """(the key as stored, whether its value is a secret); remembers clean keys."""
    secret = is_secret_name(key)
    if len(key) > MAX_KEY_CHARS:
        return truncate(key, MAX_KEY_CHARS), secret
    if not secret:
        if len(_CLEAN_KEYS) >= _MAX_KEYS_CACHED:
            _CLEAN_KEYS.clear()  # a sender inventing keys must not grow this without bound
        _CLEAN_KEYS.add(key)
    return key, secret


def attributes(key_values: Any) -> dict[str, Any]:
    """Attributes as a dict, redacted (telemetry.redact) and bounded, in one pass."""
    # Hot path (every attribute of every span): each protobuf field read
    # costs a Python object, so a string value (nearly all of them) is read
    # once and its oneof is asked only when it is empty; no call for a clean
    # key with text that cannot hold a secret.
    result: dict[str, Any] = {}
    clean = _CLEAN_KEYS
    shortest = redact.shortest_secret()
    short, redact_short, redact_long = redact.SHORT_TEXT, redact.redact_short, redact.redact_long
    for kv in key_values:
        key = kv.key
        kv_value: AnyValue = kv.value
        if key not in clean:
            key, secret = _judge_key(key)
            if secret and kv_value.WhichOneof("value") is not None:
                result[key] = REDACTED
                continue
        text = kv_value.string_value
        if text:
            size = len(text)
            if size >= shortest:
                # redact_text, without a call of its own
                text = redact_short(text) if size <= short else redact_long(text)
                if len(text) > MAX_VALUE_CHARS:
                    text = truncate(text, MAX_VALUE_CHARS)
            result[key] = text
            continue
        which = kv_value.WhichOneof("value")
        if which is None:
            result[key] = None
        elif which == "int_value":
            result[key] = kv_value.int_value
        elif which == "bool_value":
            result[key] = kv_value.bool_value
        elif which == "string_value":
            result[key] = ""
        else:
            result[key] = any_value(kv_value)
    return result


def rows_from_request(
    request: ExportTraceServiceRequest, now_ns: int | None = None
) -> DecodeResult:
    result = DecodeResult()
    rows = result.rows
    # Never beyond int64, whatever the clock says.
    horizon = min(MAX_NS, (time.time_ns() if now_ns is None else now_ns) + FUTURE_SKEW_NS)
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        service = resource.get(vocab.SERVICE_NAME)
        service_name = truncate(service, MAX_LABEL_CHARS) if isinstance(service, str) else ""
        for scope_spans in resource_spans.scope_spans:
            scope = truncate(scope_spans.scope.name, MAX_LABEL_CHARS)
            # Kept as received: forwarded spans carry the same scope.
            scope_version = truncate(scope_spans.scope.version, MAX_LABEL_CHARS)
            scope_attrs = attributes(scope_spans.scope.attributes)
            for span in scope_spans.spans:
                try:
                    row = _row(span, resource, service_name, scope, horizon)
                except InvalidSpan as exc:
                    result.rejected += 1
                    span_id = binascii.hexlify(span.span_id).decode()
                    result.errors.append(f"span {span_id}: {exc}")
                    continue
                if scope_version:
                    row["scope_version"] = scope_version
                if scope_attrs:
                    row["scope_attributes"] = scope_attrs
                rows.append(row)
    return result


def _row(
    span: ProtoSpan, resource: dict[str, Any], service: str, scope: str, horizon_ns: int
) -> dict[str, Any]:
    """The span's row; raises InvalidSpan for a span that breaks the OTLP data model
    or that the store cannot hold."""
    # Every protobuf field is read once: each read builds a Python object.
    trace_id = span.trace_id
    span_id = span.span_id
    parent = span.parent_span_id
    start = span.start_time_unix_nano
    end = span.end_time_unix_nano
    kind = span.kind
    status = span.status
    code = status.code
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
        raise InvalidSpan("trace_id must be 16 non-zero bytes")
    if len(span_id) != 8 or span_id == _ZERO_SPAN:
        raise InvalidSpan("span_id must be 8 non-zero bytes")
    if parent and len(parent) != 8:
        raise InvalidSpan("parent_span_id must be empty or 8 bytes")
    if end < start:
        raise InvalidSpan("end_time_unix_nano is before start_time_unix_nano")
    if end > horizon_ns:
        raise InvalidSpan("end_time_unix_nano is more than 24 hours ahead of the receiver's clock")
    if not 0 <= kind <= MAX_SPAN_KIND:
        raise InvalidSpan(f"kind {kind} is not an OTLP SpanKind")
    if not 0 <= code <= MAX_STATUS_CODE:
        raise InvalidSpan(f"status.code {code} is not an OTLP StatusCode")
    attrs = attributes(span.attributes)
    name = span.name
    if len(name) >= redact.shortest_secret():
        name = redact_text(name)
        if len(name) > MAX_NAME_CHARS:
            name = truncate(name, MAX_NAME_CHARS)
    message = status.message
    if message:
        message = redact_text(message)
        if len(message) > MAX_MESSAGE_CHARS:
            message = truncate(message, MAX_MESSAGE_CHARS)
    events = span.events
    links = span.links
    row: dict[str, Any] = {
        "trace_id": trace_id.hex(),
        "span_id": span_id.hex(),
        "parent_span_id": "" if not parent or parent == _ZERO_SPAN else parent.hex(),
        "name": name,
        "span_kind": kind,
        "start_ns": start,
        "end_ns": end,
        "duration_ns": end - start,
        "status_code": code,
        "status_message": message,
        "service_name": service,
        "scope": scope,
        "attributes": attrs,
        "events": [
            {
                "name": truncate(redact_text(e.name), MAX_NAME_CHARS),
                "time_ns": e.time_unix_nano,
                "attributes": attributes(e.attributes),
            }
            for e in events
        ]
        if events
        else [],
        "links": [
            {
                "trace_id": link.trace_id.hex(),
                "span_id": link.span_id.hex(),
                "attributes": attributes(link.attributes),
            }
            for link in links
        ]
        if links
        else [],
        "resource": resource,
    }
    _put_correlation_keys(row, attrs, name)
    return row


def _text(value: Any) -> str:
    return "" if not value else value if value.__class__ is str else str(value)


def _label(value: Any) -> str:
    text = _text(value)
    return text if len(text) <= MAX_LABEL_CHARS else truncate(text, MAX_LABEL_CHARS)


def _id(value: Any, column: str) -> str:
    text = _text(value)
    limit = MAX_ID_CHARS[column]
    if len(text) > limit:
        raise InvalidSpan(f"{column} is longer than {limit} characters")
    return text


def _int(value: Any) -> int | None:
    """An integer attribute: None when the value is not a number at all."""
    if value is None or value.__class__ is bool:
        return None
    if value.__class__ is int:
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidSpan(f"{value} is not a finite number")
        return int(value)
    return None


def _count(value: Any, name: str, maximum: int) -> int | None:
    try:
        number = _int(value)
    except InvalidSpan as exc:
        raise InvalidSpan(f"{name}: {exc}") from None
    if number is not None and not 0 <= number <= maximum:
        raise InvalidSpan(f"{name} must be a number from 0 to {maximum}, not {str(value)[:40]}")
    return number


def normalize_kind(attrs: dict[str, Any], name: str) -> str:
    """One kind whatever the instrumentation: the Agents SDK's span types, Temporal's spans."""
    agents_type = attrs.get(vocab.AGENTS_SPAN_TYPE)
    if agents_type:
        kind = str(agents_type).lower()
        return kind if kind in vocab.KINDS else "other"
    prefix, colon, _ = name.partition(":")
    # temporalio.openai_agents' own spans are OpenInference CHAIN spans named
    # "temporal:<operation>"; Temporal's OTel spans "<Operation>:<name>".
    if colon and (
        prefix in vocab.TEMPORAL_SPAN_PREFIXES or name.startswith(vocab.NATIVE_SPAN_PREFIX)
    ):
        return "temporal"
    kind = "other"
    openinference = attrs.get(vocab.OI_SPAN_KIND)
    traceloop = attrs.get(vocab.TRACELOOP_SPAN_KIND)
    operation = attrs.get(vocab.GEN_AI_OPERATION)
    if openinference:
        kind = vocab.OPENINFERENCE_KINDS.get(str(openinference).upper(), "other")
        if kind == "function" and name.startswith(vocab.OI_HANDOFF_PREFIX):
            kind = "handoff"
    elif traceloop and str(traceloop).lower() in vocab.TRACELOOP_KINDS:
        kind = vocab.TRACELOOP_KINDS[str(traceloop).lower()]
    elif operation:
        kind = vocab.GEN_AI_OPERATIONS.get(str(operation).lower(), "other")
    if kind == "agent" and first(attrs, vocab.AGENT_KEYS) is None:
        # The span an instrumentation opens for a whole Agents SDK trace
        # ("Agent workflow"): an AGENT span that names no agent is not one.
        return "trace"
    return kind


def workflow_type(attrs: dict[str, Any], name: str) -> str:
    value = attrs.get(vocab.WORKFLOW_TYPE)
    if value:
        return _label(value)
    prefix, colon, rest = name.partition(":")
    if colon and prefix in vocab.WORKFLOW_SPAN_PREFIXES:
        return _label(rest)
    return ""


def first(attrs: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first of keys that attrs has and that is not empty."""
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


def _first_of(get: Any, keys: tuple[str, ...]) -> Any:
    """first() for correlation_keys: the first key answers for nearly every span,
    so it is looked up before any loop."""
    value = get(keys[0])
    if value is not None and value != "":
        return value
    for key in keys[1:]:
        value = get(key)
        if value is not None and value != "":
            return value
    return None


def correlation_keys(attrs: dict[str, Any], name: str) -> dict[str, Any]:
    """The indexed columns of a span; raises InvalidSpan for values the store cannot hold."""
    columns: dict[str, Any] = {}
    _put_correlation_keys(columns, attrs, name)
    return columns


# Each Temporal id column: (column, its first key, every key it may come from, its limit).
_ID_COLUMNS = tuple(
    (column, keys[0], keys, MAX_ID_CHARS[column])
    for column, keys in (
        ("workflow_id", vocab.WORKFLOW_ID_KEYS),
        ("run_id", vocab.RUN_ID_KEYS),
        ("activity_id", vocab.ACTIVITY_ID_KEYS),
    )
)


def _label_of(value: Any) -> str:
    return value if value.__class__ is str and len(value) <= MAX_LABEL_CHARS else _label(value)


def _put_correlation_keys(row: dict[str, Any], attrs: dict[str, Any], name: str) -> None:
    """correlation_keys into row. Hot path (every span): plain dict lookups, and
    the helpers (_first_of, _id, _label, _count) only where a value is not the
    plain text or integer nearly every span carries."""
    get = attrs.get
    kind = get(vocab.AGENTS_SPAN_TYPE)
    if kind.__class__ is str and kind in vocab.KINDS:
        pass  # the Agents SDK's own type, as normalize_kind would lower it
    else:
        kind = normalize_kind(attrs, name)
    # An agent span names its agent, a model span the agent that called it;
    # instrumentations also stamp a default or the calling agent's name on
    # tool and handoff spans, which is no agent of theirs.
    if kind == "agent":
        agent = _first_of(get, vocab.AGENT_KEYS)
    elif kind in vocab.MODEL_KINDS:
        agent = _first_of(get, vocab.CALLING_AGENT_KEYS)
        # Compared as text: a sender may send any value, a list included.
        if agent is not None and _text(agent) in vocab.PLACEHOLDER_AGENT_NAMES:
            agent = None
    else:
        agent = get(vocab.AGENTS_AGENT)

    for column, key, keys, limit in _ID_COLUMNS:
        value = get(key)
        if value is None or value == "":
            value = _first_of(get, keys)
        if value is None:
            value = ""
        elif value.__class__ is not str or len(value) > limit:
            value = _id(value, column)
        row[column] = value

    value = get(vocab.ACTIVITY_ATTEMPT)
    if value is not None and (value.__class__ is not int or not 0 <= value <= MAX_ATTEMPT):
        value = _count(value, "attempt", MAX_ATTEMPT)
    row["attempt"] = value
    row["kind"] = kind
    value = _first_of(get, vocab.MODEL_KEYS)
    row["model"] = "" if value is None else _label_of(value)
    row["agent"] = "" if agent is None else _label_of(agent)
    value = _first_of(get, vocab.TOOL_KEYS)
    row["tool"] = "" if value is None else _label_of(value)
    value = _first_of(get, vocab.INPUT_TOKEN_KEYS)
    if value is not None and (value.__class__ is not int or not 0 <= value <= MAX_TOKENS):
        value = _count(value, "tokens_in", MAX_TOKENS)
    row["tokens_in"] = value
    value = _first_of(get, vocab.OUTPUT_TOKEN_KEYS)
    if value is not None and (value.__class__ is not int or not 0 <= value <= MAX_TOKENS):
        value = _count(value, "tokens_out", MAX_TOKENS)
    row["tokens_out"] = value
    value = get(vocab.WORKFLOW_TYPE)
    row["workflow_type"] = _label_of(value) if value else workflow_type(attrs, name)
    row["inherited"] = False


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

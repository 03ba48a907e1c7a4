"""OTLP/protobuf bytes of finished spans, written straight in the protobuf wire format.

The stock OTLP encoder (``opentelemetry-exporter-otlp-proto-common``) builds a
protobuf message object for every span, attribute and value, then serializes
them: about 60 µs of the worker's CPU per span, most of the tracing cost left
once the bridge is lean. This writes the same bytes directly (field numbers
and wire types of ``opentelemetry/proto/trace/v1/trace.proto`` and
``common.proto``, fields in field-number order as protobuf serializes them),
encoding each resource, scope and attribute name once. A test checks the
output byte for byte against the stock encoder's.

Only encoding lives here; decoding always uses opentelemetry-proto's classes.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from telemetry import redact
from telemetry.memo import Memo

logger = logging.getLogger(__name__)

_SMALL = [bytes([n]) for n in range(128)]
_PACK_DOUBLE = struct.Struct("<d").pack
_PACK_FIXED64 = struct.Struct("<Q").pack
_PACK_FIXED32 = struct.Struct("<I").pack
# SpanKind → OTLP Span.SpanKind (the SDK's INTERNAL is 0, OTLP's is 1).
_KINDS = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
# SpanFlags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64  # int64: ten bytes of two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Length → its varint: lengths repeat (the same attributes on every span of a run).
_SIZES: Memo[int, bytes] = Memo(_varint, 4096)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _SIZES[len(payload)] + payload


def _any_value(value: Any) -> bytes:
    """The body of an AnyValue, as the stock encoder's ``_encode_value`` builds it."""
    kind = type(value)
    if kind is str:
        return _field(b"\x0a", value.encode())
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        return b"\x18" + _varint(value)
    if kind is float:
        return b"\x21" + _PACK_DOUBLE(value)
    if value is None:
        return b""
    if kind is list or kind is tuple:
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(item)) for item in value))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _PACK_DOUBLE(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _field(
            b"\x32",
            b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()),
        )
    raise TypeError(f"Invalid type {type(value)} of value {value}")


@lru_cache(maxsize=4096)
def _key(name: str) -> bytes:
    return _field(b"\x0a", name.encode())


def _key_value(name: str, value: Any) -> bytes:
    return _key(name) + _field(b"\x12", _any_value(value))


# Encoded string attributes of at most _SHORT_STRING characters: ids, names, models,
# queues, the run's correlation attributes. The same few repeat on every span of a
# run, so most spans find most of theirs here (a dict lookup instead of an encode).
_SHORT_STRING = 100
_SHORT_STRINGS_MAX = 16_384
_SHORT_STRINGS: dict[tuple[bytes, str, str], bytes] = {}


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated KeyValue fields; strings, the usual case, inlined (this is the hot loop)."""
    if not attributes:
        return b""
    out = bytearray()
    cache, sizes = _SHORT_STRINGS, _SIZES
    for name, value in attributes.items():
        if type(value) is str:
            short = len(value) <= _SHORT_STRING
            if short:
                encoded = cache.get((tag, name, value))
                if encoded is not None:
                    out += encoded
                    continue
            data = value.encode()
            size = len(data)
            # KeyValue{key, value: AnyValue{string_value}}, lengths worked out up front.
            any_value = b"\x0a" + sizes[size] + data
            size = len(any_value)
            body = _key(name) + b"\x12" + sizes[size]
            size += len(body)
            encoded = tag + sizes[size] + body + any_value
            out += encoded
            if short:
                if len(cache) >= _SHORT_STRINGS_MAX:
                    cache.clear()
                cache[tag, name, value] = encoded
            continue
        try:
            out += _field(tag, _key_value(name, value))
        except Exception as error:  # as the stock encoder: skip the attribute, keep the span
            logger.exception("Failed to encode key %s: %s", name, error)
    return bytes(out)


# Short string attributes redacted and encoded (:func:`redacted_attributes`):
# (name, value) → the KeyValue field, for the same reasons as _SHORT_STRINGS.
_REDACTED_SHORT: dict[tuple[str, str], bytes] = redact.derived_cache({})
_PLAIN_TYPES = frozenset((int, float, bool))


def redacted_attributes(attributes: Mapping[str, Any]) -> bytes:
    """A span's ``attributes`` field, redacted as :func:`telemetry.redact.secret_changes`
    redacts, with None values left out: the bytes :func:`_attributes` gives for
    ``{k: v for k, v in attributes.items() if v is not None}`` updated with its
    ``secret_changes``, in one pass.

    A short text attribute's field is kept, so the ids, names and models that come
    back on every span cost a lookup; a long text that is several attributes'
    value (a model call's messages, in the GenAI and OpenInference names) is
    redacted and encoded once.
    """
    out = bytearray()
    cache, sizes, shortest = _REDACTED_SHORT, _SIZES, redact.shortest_secret()
    long_values: dict[int, bytes] = {}
    for name, value in attributes.items():
        if type(value) is str:
            size = len(value)
            short = size <= _SHORT_STRING
            if short:
                encoded = cache.get((name, value))
                if encoded is not None:
                    out += encoded
                    continue
            if redact.is_secret_name(name):
                any_value = _field(b"\x0a", redact.REDACTED.encode())
            elif short or size < shortest:
                any_value = _field(b"\x0a", redact.redact_text(value).encode())
            else:
                # The attributes hold every value while this runs: ids are not reused.
                any_value = long_values.get(id(value)) or long_values.setdefault(
                    id(value), _field(b"\x0a", redact.redact_long(value).encode())
                )
            body = _key(name) + b"\x12" + sizes[len(any_value)] + any_value
            encoded = b"\x4a" + sizes[len(body)] + body
            out += encoded
            if short:
                if len(cache) >= _SHORT_STRINGS_MAX:
                    cache.clear()
                cache[name, value] = encoded
            continue
        if value is None:
            continue
        if redact.is_secret_name(name):
            if value != redact.REDACTED:
                value = redact.REDACTED
        elif type(value) not in _PLAIN_TYPES:
            clean = redact.redact_value(value)
            if clean != value:
                value = clean
        try:
            out += _field(b"\x4a", _key_value(name, value))
        except Exception as error:  # as the stock encoder: skip the attribute, keep the span
            logger.exception("Failed to encode key %s: %s", name, error)
    return bytes(out)


def span_attributes(attributes: Mapping[str, Any]) -> bytes:
    """A span's ``attributes`` field as :func:`_attributes` encodes it (no redaction)."""
    return _attributes(b"\x4a", attributes)


def span_bytes(
    trace_id: int,
    span_id: int,
    parent: SpanContext | tuple[int, int, bool] | None,
    name: str,
    start: int | None,
    end: int | None,
    attributes: bytes,
    status: Any,
    kind: SpanKind = SpanKind.INTERNAL,
    trace_state: Any = None,
) -> bytes:
    """An OTLP ``Span`` with no events or links whose ``attributes`` field is
    already encoded (:func:`span_attributes`, :func:`redacted_attributes`).
    ``parent``: a ``SpanContext``, or what is read of one (its first three fields:
    trace id, span id, is remote)."""
    out = b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08" + span_id.to_bytes(8, "big")
    if trace_state:
        state = ",".join(f"{key}={value}" for key, value in trace_state.items())
        if state:
            out += _field(b"\x1a", state.encode())
    if parent is not None:
        out += b"\x22\x08" + parent[1].to_bytes(8, "big")
    if name:
        data = name.encode()
        out += b"\x2a" + _SIZES[len(data)] + data
    out += b"\x30" + _SMALL[_KINDS[kind]]
    if start:
        out += b"\x39" + _PACK_FIXED64(start)
    if end:
        out += b"\x41" + _PACK_FIXED64(end)
    out += attributes
    out += _status(status)
    flags = _HAS_IS_REMOTE | _IS_REMOTE if parent is not None and parent[2] else _HAS_IS_REMOTE
    return out + b"\x85\x01" + _PACK_FIXED32(flags)


def _flags(context: SpanContext | None) -> int:
    if context is not None and context.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE


def _span(span: ReadableSpan) -> bytes:
    fields = span.__dict__
    if (
        type(span) is ReadableSpan
        and type(fields["_attributes"]) is dict
        and not fields["_events"]
        and not fields["_links"]
    ):
        # The worker's own spans (the bridge's, and Temporal's once redacted): plain
        # ReadableSpans read field by field, not through a dozen properties each.
        return _plain_span(fields)
    return _any_span(span)


def _plain_span(fields: dict[str, Any]) -> bytes:
    """:func:`_any_span` for a plain ``ReadableSpan`` (``fields``: its ``__dict__``)
    with a dict of attributes and no events or links."""
    # SpanContext is a tuple: trace id, span id, is remote, flags, state, is valid.
    context = fields["_context"]
    return span_bytes(
        context[0],
        context[1],
        fields["_parent"],
        fields["_name"],
        fields["_start_time"],
        fields["_end_time"],
        _attributes(b"\x4a", fields["_attributes"]),
        fields["_status"],
        fields["_kind"],
        context[4],
    )


def _status(status: Any) -> bytes:
    if status.status_code is StatusCode.UNSET and not status.description:
        return b"\x7a\x00"
    body = b""
    if status.description:
        body += _field(b"\x12", status.description.encode())
    if status.status_code.value:
        body += b"\x18" + _SMALL[status.status_code.value]
    return _field(b"\x7a", body)


def _any_span(span: ReadableSpan) -> bytes:
    context = span.context
    assert context is not None
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
        if state:
            parts.append(_field(b"\x1a", state.encode()))
    parent = span.parent
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_field(b"\x2a", span.name.encode()))
    parts.append(b"\x30" + _SMALL[_KINDS[span.kind]])
    if span.start_time:
        parts.append(b"\x39" + _PACK_FIXED64(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _PACK_FIXED64(span.end_time))
    parts.append(_attributes(b"\x4a", span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        body = b""
        if event.timestamp:
            body += b"\x09" + _PACK_FIXED64(event.timestamp)
        if event.name:
            body += _field(b"\x12", event.name.encode())
        body += _attributes(b"\x1a", event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        parts.append(_field(b"\x5a", body))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        body = (
            b"\x0a\x10"
            + link.context.trace_id.to_bytes(16, "big")
            + b"\x12\x08"
            + link.context.span_id.to_bytes(8, "big")
            + _attributes(b"\x22", link.attributes)
        )
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        body += b"\x35" + _PACK_FIXED32(_flags(link.context))
        parts.append(_field(b"\x6a", body))
    if span.dropped_links:
        parts.append(b"\x70" + _varint(span.dropped_links))
    parts.append(_status(span.status))
    parts.append(b"\x85\x01" + _PACK_FIXED32(_flags(parent)))
    return b"".join(parts)


class _Cache:
    """Encoded resources and scopes: a worker has a handful, each encoded once."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, Any]] = {}

    def get(self, key: Any, encode: Any) -> Any:
        entry = self._entries.get(id(key))
        if entry is None or entry[0] is not key:
            if len(self._entries) > 256:
                self._entries.clear()
            entry = (key, encode(key))
            self._entries[id(key)] = entry
        return entry[1]


_resources = _Cache()
_scopes = _Cache()


def _resource(resource: Any) -> bytes:
    body = _attributes(b"\x0a", resource.attributes)
    return _field(b"\x0a", body)


def _scope(scope: Any) -> tuple[bytes, bytes]:
    """What comes before a ScopeSpans' spans (its scope) and after them (its schema URL)."""
    if scope is None:
        return b"\x0a\x00", b""
    body = b""
    if scope.name:
        body += _field(b"\x0a", scope.name.encode())
    if scope.version:
        body += _field(b"\x12", scope.version.encode())
    body += _attributes(b"\x1a", scope.attributes)
    tail = _field(b"\x1a", scope.schema_url.encode()) if scope.schema_url else b""
    return _field(b"\x0a", body), tail


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An ``ExportTraceServiceRequest``, serialized, as the stock OTLP encoder makes it."""
    # Resource → scope → spans, in first-seen order, as the stock encoder groups them.
    resources: dict[int, Any] = {}
    scopes: dict[int, dict[int, Any]] = {}
    encoded: dict[tuple[int, int], list[bytes]] = {}
    for span in spans:
        resource, scope = _resource_and_scope(span)
        in_resource = scopes.get(id(resource))
        if in_resource is None:
            resources[id(resource)] = resource
            in_resource = scopes[id(resource)] = {}
        if id(scope) not in in_resource:
            in_resource[id(scope)] = scope
            encoded[id(resource), id(scope)] = []
        message = _span(span)
        encoded[id(resource), id(scope)].append(b"\x12" + _SIZES[len(message)] + message)
    out = []
    for resource_key, resource in resources.items():
        body = [_resources.get(resource, _resource)]
        for scope_key, scope in scopes[resource_key].items():
            head, tail = _scopes.get(scope, _scope) if scope is not None else _scope(None)
            spans_body = b"".join(encoded[resource_key, scope_key])
            body.append(_field(b"\x12", head + spans_body + tail))
        if resource.schema_url:
            body.append(_field(b"\x1a", resource.schema_url.encode()))
        out.append(_field(b"\x0a", b"".join(body)))
    return b"".join(out)


def _resource_and_scope(span: ReadableSpan) -> tuple[Any, Any]:
    if type(span) is ReadableSpan:
        fields = span.__dict__
        return fields["_resource"], fields["_instrumentation_scope"] or None
    return span.resource, span.instrumentation_scope or None


# -- spans encoded at their end ----------------------------------------------------------
#
# A span waiting in a batch queue for its export is a graph of objects the garbage
# collector tracks (the span, its contexts, attributes, status). In a worker they
# wait long enough to outlive two young collections, so each is promoted to the
# oldest generation and counts towards the next full collection, which in a worker
# full of workflow sandboxes costs 100-200 ms. A record is bytes only: it is never
# promoted, and a full collection never walks it.

#: Where a span goes in a request (its resource and scope, encoded) and the span.
#: Both parts are bytes, so the tuple is one the collector stops tracking.
Group = tuple[bytes, bytes, bytes, bytes]
Record = tuple[Group, bytes]


class _Groups:
    """Encoded (resource, scope) pairs: a worker has a handful, each encoded once."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int], tuple[Any, Any, Group]] = {}

    def get(self, resource: Any, scope: Any) -> Group:
        entry = self._entries.get((id(resource), id(scope)))
        if entry is None or entry[0] is not resource or entry[1] is not scope:
            if len(self._entries) > 256:
                self._entries.clear()
            head, tail = _scopes.get(scope, _scope) if scope is not None else _scope(None)
            schema = _field(b"\x1a", resource.schema_url.encode()) if resource.schema_url else b""
            group = (_resources.get(resource, _resource), head, tail, schema)
            entry = self._entries[id(resource), id(scope)] = (resource, scope, group)
        return entry[2]


_groups = _Groups()


def group_of(resource: Any, scope: Any) -> Group:
    """The encoded resource and scope of a record (see :data:`Record`)."""
    return _groups.get(resource, scope or None)


def record_of(group: Group, message: bytes) -> Record:
    """A record of a span encoded elsewhere (:func:`span_bytes`)."""
    return group, b"\x12" + _SIZES[len(message)] + message


def span_record(span: ReadableSpan) -> Record:
    """The span as bytes, with its encoded resource and scope: see :func:`encode_records`."""
    resource, scope = _resource_and_scope(span)
    message = _span(span)
    return _groups.get(resource, scope), b"\x12" + _SIZES[len(message)] + message


def encode_records(records: Sequence[Record]) -> bytes:
    """An ``ExportTraceServiceRequest`` of spans encoded by :func:`span_record`.

    Spans are grouped by their resource and then scope, in first-seen order, as
    :func:`encode_spans` groups them; resources (or scopes) that encode the same
    share one entry.
    """
    resources: dict[tuple[bytes, bytes], dict[tuple[bytes, bytes], list[bytes]]] = {}
    for (resource, head, tail, schema), message in records:
        scopes = resources.get((resource, schema))
        if scopes is None:
            scopes = resources[resource, schema] = {}
        spans = scopes.get((head, tail))
        if spans is None:
            spans = scopes[head, tail] = []
        spans.append(message)
    out = []
    for (resource, schema), scopes in resources.items():
        body = [resource]
        for (head, tail), spans in scopes.items():
            body.append(_field(b"\x12", head + b"".join(spans) + tail))
        body.append(schema)
        out.append(_field(b"\x0a", b"".join(body)))
    return b"".join(out)

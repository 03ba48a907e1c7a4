"""Sending one export request to one collector over OTLP/HTTP or OTLP/gRPC.

Only transport: the request is built by tracing.encode. ``send`` never raises;
it returns an ``Outcome`` that says whether the collector took the spans and,
if not, whether trying again can help and when (``Retry-After``, gRPC
``RetryInfo``). Error texts never include header values: they are secrets.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from dataclasses import dataclass

import grpc  # type: ignore[import-untyped]
import requests
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

from tracing import encode
from tracing.exporters import GRPC, HTTP_JSON, Exporter

# OTLP/HTTP: what a retry can fix. Every other 4xx is the request's fault.
RETRYABLE_HTTP = frozenset({408, 429})
# OTLP/gRPC: the codes the OTLP spec calls retryable (RESOURCE_EXHAUSTED too:
# a collector under memory pressure says so and recovers).
RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
MAX_ERROR_CHARS = 300


@dataclass
class Outcome:
    ok: bool
    retryable: bool = False
    retry_after: float | None = None
    error: str = ""
    # partial_success: spans the collector accepted the request for but dropped.
    dropped: int = 0


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _partial(response: ExportTraceServiceResponse) -> Outcome:
    partial = response.partial_success
    if partial.rejected_spans or partial.error_message:
        message = partial.error_message or "no reason given"
        return Outcome(
            ok=True,
            dropped=partial.rejected_spans,
            error=_clip(f"collector dropped {partial.rejected_spans} span(s): {message}"),
        )
    return Outcome(ok=True)


class _Clients:
    """One HTTP session / gRPC channel per collector, reused across batches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[Exporter, requests.Session] = {}
        self._stubs: dict[Exporter, tuple[grpc.Channel, TraceServiceStub]] = {}

    def session(self, exporter: Exporter) -> requests.Session:
        with self._lock:
            session = self._sessions.get(exporter)
            if session is None:
                session = requests.Session()
                session.headers.update(exporter.send_headers)
                if exporter.insecure:
                    session.verify = False
                elif exporter.ca_cert:
                    session.verify = exporter.ca_cert
                self._sessions[exporter] = session
            return session

    def stub(self, exporter: Exporter) -> TraceServiceStub:
        with self._lock:
            entry = self._stubs.get(exporter)
            if entry is None:
                channel = _channel(exporter)
                entry = (channel, TraceServiceStub(channel))
                self._stubs[exporter] = entry
            return entry[1]

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            for channel, _ in self._stubs.values():
                channel.close()
            self._sessions.clear()
            self._stubs.clear()


_clients = _Clients()


def close() -> None:
    _clients.close()


def _channel(exporter: Exporter) -> grpc.Channel:
    endpoint = exporter.endpoint
    scheme, sep, rest = endpoint.partition("://")
    target = rest if sep else endpoint
    target = target.rstrip("/")
    plaintext = exporter.insecure or scheme == "http"
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    if plaintext and not exporter.ca_cert:
        return grpc.insecure_channel(target, options=options)
    root = None
    if exporter.ca_cert:
        with open(exporter.ca_cert, "rb") as handle:
            root = handle.read()
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root), options=options)


def send(exporter: Exporter, request: ExportTraceServiceRequest) -> Outcome:
    try:
        if exporter.protocol == GRPC:
            return _send_grpc(exporter, request)
        return _send_http(exporter, request)
    except Exception as exc:  # an exporter never raises into the forwarder
        return Outcome(ok=False, retryable=True, error=_clip(f"{type(exc).__name__}: {exc}"))


def _send_http(exporter: Exporter, request: ExportTraceServiceRequest) -> Outcome:
    if exporter.protocol == HTTP_JSON:
        body = json.dumps(encode.to_json(request), separators=(",", ":")).encode()
        content_type = "application/json"
    else:
        body = request.SerializeToString()
        content_type = "application/x-protobuf"
    try:
        response = _clients.session(exporter).post(
            exporter.endpoint,
            data=body,
            headers={"Content-Type": content_type},
            timeout=exporter.timeout,
        )
    except requests.RequestException as exc:
        return Outcome(ok=False, retryable=True, error=_clip(f"{type(exc).__name__}: {exc}"))
    status = response.status_code
    if 200 <= status < 300:
        parsed = ExportTraceServiceResponse()
        try:
            if response.headers.get("Content-Type", "").startswith("application/json"):
                json_format.Parse(response.text or "{}", parsed, ignore_unknown_fields=True)
            else:
                parsed.ParseFromString(response.content)
        except Exception:
            return Outcome(ok=True)  # accepted; an unreadable body changes nothing
        return _partial(parsed)
    message = _http_error_message(response)
    retryable = status in RETRYABLE_HTTP or status >= 500
    return Outcome(
        ok=False,
        retryable=retryable,
        retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        error=_clip(f"HTTP {status}: {message}"),
    )


def _http_error_message(response: requests.Response) -> str:
    """The google.rpc.Status message OTLP/HTTP collectors send, else the body's text."""
    status = status_pb2.Status()
    try:
        if response.headers.get("Content-Type", "").startswith("application/x-protobuf"):
            status.ParseFromString(response.content)
        else:
            json_format.Parse(response.text, status, ignore_unknown_fields=True)
        if status.message:
            return str(status.message)
    except Exception:
        pass
    return response.text or response.reason or ""


def _send_grpc(exporter: Exporter, request: ExportTraceServiceRequest) -> Outcome:
    try:
        response = _clients.stub(exporter).Export(
            request, metadata=list(exporter.send_headers.items()), timeout=exporter.timeout
        )
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        details = exc.details() or ""
        delay = _grpc_retry_delay(exc)
        return Outcome(
            ok=False,
            retryable=code in RETRYABLE_GRPC,
            retry_after=delay,
            error=_clip(f"gRPC {code.name}: {details}"),
        )
    return _partial(response)


def _grpc_retry_delay(exc: grpc.RpcError) -> float | None:
    """The delay of a ``google.rpc.RetryInfo`` in the status details, if the server sent one."""
    try:
        trailers = exc.trailing_metadata() or ()
    except Exception:
        return None
    for key, value in trailers:
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status()
        status.ParseFromString(value)
        for detail in status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None

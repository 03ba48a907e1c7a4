"""Request bodies bounded before they are read: daphne's side of the body limits.

Daphne (on Twisted) buffers a whole request body before it calls the ASGI
app, so a view can only refuse a large body after it has been received, and
a body that never finishes is never answered. This guard sits in Twisted's
request instead, which sees the headers before the body:

- a declared ``Content-Length`` over the limit is refused with 413 at once,
  before a byte of the body is read;
- a chunked body is counted as it arrives and refused with 413 the moment it
  passes the limit;
- a body not complete within ``LOOMVIEW_BODY_TIMEOUT_SECONDS`` of its headers
  (a stalled or trickling sender) is answered 408.

A body within the limit is kept in memory (Twisted would spill one over
100 kB to a temporary file) and handed to the application in one ASGI
message instead of daphne's 8 kB pieces.

Each refusal closes the connection. The limit is ``LOOMVIEW_OTLP_MAX_BODY_BYTES``
for the OTLP receiver and Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (forms)
elsewhere. The receiver view checks the size again, for servers other than
daphne.

``install()`` (called by dashboard.asgi) makes daphne's server build its HTTP
protocol with this request class; it changes nothing else in daphne.
"""

from __future__ import annotations

import json
import logging
import sys
from io import BytesIO
from typing import Any, cast

from django.conf import settings

logger = logging.getLogger(__name__)

OTLP_PATH = b"/v1/traces"
# google.rpc.Code values, as the receiver's own error bodies use them.
_RESOURCE_EXHAUSTED = 8
_DEADLINE_EXCEEDED = 4
# Daphne hands a body to the application in one message (bench/ingest_cpu.py
# reads this to post as daphne does).
BODY_IN_ONE_MESSAGE = True


def body_limit(path: bytes) -> int:
    if path.split(b"?", 1)[0] == OTLP_PATH:
        return int(settings.LOOMVIEW_OTLP_MAX_BODY_BYTES)
    forms = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return int(forms) if forms is not None else int(settings.LOOMVIEW_OTLP_MAX_BODY_BYTES)


def _refusal(status: int, reason: str, code: int, message: str) -> bytes:
    # google.rpc.Status as JSON: what an OTLP exporter reads, and plain
    # enough for anything else.
    body = json.dumps({"code": code, "message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


def install() -> None:
    """Make daphne's HTTP server use GuardedRequest (idempotent).

    Only in a process daphne serves (its server module is loaded before the
    app): importing it elsewhere would install Twisted's reactor for nothing.
    """
    if "daphne.server" not in sys.modules:
        return
    from daphne import server
    from daphne.http_protocol import HTTPFactory, WebRequest
    from twisted.internet import reactor

    if getattr(server.HTTPFactory, "guarded", False):
        return

    class GuardedRequest(WebRequest):
        _refused = False
        _received = 0
        _limit = 0
        _deadline: Any = None

        def gotLength(self, length: int | None) -> None:
            self._limit = body_limit(self.channel._path)
            if length is not None and length > self._limit:
                self._refuse(
                    413,
                    "Payload Too Large",
                    _RESOURCE_EXHAUSTED,
                    f"body of {length} bytes exceeds {self._limit} bytes",
                )
                return
            # In memory, not Twisted's temporary file for bodies over 100 kB:
            # the limit above bounds it, and the body is handed to the app
            # in one piece (see GuardedHTTPFactory) without a disk round trip.
            self.content = BytesIO()
            if length != 0:
                timeout = float(settings.LOOMVIEW_BODY_TIMEOUT_SECONDS)
                self._deadline = cast(Any, reactor).callLater(timeout, self._timed_out, timeout)

        def handleContentChunk(self, data: bytes) -> None:
            if self._refused:
                return
            self._received += len(data)
            if self._received > self._limit:
                self._refuse(
                    413,
                    "Payload Too Large",
                    _RESOURCE_EXHAUSTED,
                    f"body exceeds {self._limit} bytes",
                )
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            self._cancel_deadline()
            if self._refused:
                return
            super().requestReceived(command, path, version)

        def connectionLost(self, reason: Any) -> None:
            self._cancel_deadline()
            super().connectionLost(reason)

        def _timed_out(self, timeout: float) -> None:
            self._deadline = None
            self._refuse(
                408,
                "Request Timeout",
                _DEADLINE_EXCEEDED,
                f"request body not received within {timeout:g} s",
            )

        def _cancel_deadline(self) -> None:
            if self._deadline is not None and self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

        def _refuse(self, status: int, reason: str, code: int, message: str) -> None:
            if self._refused:
                return
            self._refused = True
            self._cancel_deadline()
            # No "100 Continue" after the refusal (Twisted sends it after gotLength).
            self.requestHeaders.removeHeader(b"Expect")
            # Whatever still arrives is dropped, never buffered.
            self.content = BytesIO()
            logger.warning(
                "refused %s %s from %s: %s",
                self.channel._command.decode(errors="replace"),
                self.channel._path[:200].decode(errors="replace"),
                self.client_addr,
                message,
            )
            self.channel.transport.write(_refusal(status, reason, code, message))
            self.channel.loseConnection()

    class GuardedHTTPFactory(HTTPFactory):
        guarded = True

        def __init__(self, server: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(server, *args, **kwargs)
            # Daphne hands a body to the app in pieces of request_buffer_size
            # (8 kB by default): 256 messages, each an await in the app, for
            # a 2 MB OTLP export. The body is already whole in memory and
            # bounded by the limit; one message carries it.
            largest = max(body_limit(OTLP_PATH), body_limit(b"/"))
            server.request_buffer_size = max(server.request_buffer_size, largest + 1)

        def buildProtocol(self, addr: Any) -> Any:
            protocol = super().buildProtocol(addr)
            protocol.requestFactory = GuardedRequest
            return protocol

    server.HTTPFactory = GuardedHTTPFactory

"""``POST /v1/traces`` straight from ASGI: the receiver without Django's request cycle.

Exporters post hundreds of spans a request, many requests a second, and
none of Django's middleware applies to them: no session, user, CSRF token,
messages or htmx; the receiver checks its own bearer token. Through Django's
ASGI handler each request still paid for all of it, and for a thread (and a
database connection) of its own: about 10 ms of CPU per 512-span request.
This app answers ``POST /v1/traces`` itself and hands every other request to
the Django application unchanged:

- the body is read as it arrives, refused with 413 past the limit (daphne's
  guard, dashboard.http_guard, refuses sooner; this holds under any server);
- decoding runs on a worker thread, storing on one long-lived thread of its
  own, which keeps its database connection between requests (checked as
  Django checks it around a request: close_old_connections);
- the answer is tracing.views.export's, the same as the Django view's, with
  the headers the site's middleware would add (CSP, nosniff, referrer and
  framing policies);
- the Host header is validated against ALLOWED_HOSTS, as Django does.

Anything unexpected is logged and answered 500, as Django would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.http.request import split_domain_port, validate_host

from tracing import views

logger = logging.getLogger(__name__)

PATH = "/v1/traces"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: Django's, channels' and asgiref's ASGI types disagree.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

# One thread stores every request's spans (writes are serialized anyway: the
# SQLite writer lock, PostgreSQL's span-writer advisory lock) and keeps its
# database connection.
_store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="otlp-store")


def _store_with_connection(function: Callable[..., Any], *args: Any) -> Any:
    # What Django does at the start and the end of each request: drop a
    # connection that failed or outlived CONN_MAX_AGE.
    close_old_connections()
    try:
        return function(*args)
    finally:
        close_old_connections()


async def _decode_in(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


async def _store_in(function: Callable[..., Any], *args: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_store_thread, _store_with_connection, function, *args)


def _site_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The headers the site's middleware adds to every response (settings are read each time:
    tests change them)."""
    headers = [(b"Content-Security-Policy", settings.LOOMVIEW_CSP.encode())]
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"X-Content-Type-Options", b"nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        text = policy if isinstance(policy, str) else ",".join(policy)
        headers.append((b"Referrer-Policy", text.encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(
            (b"Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode())
        )
    if settings.X_FRAME_OPTIONS:
        headers.append((b"X-Frame-Options", settings.X_FRAME_OPTIONS.encode()))
    if settings.SECURE_HSTS_SECONDS and scope.get("scheme") == "https":
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        headers.append((b"Strict-Transport-Security", hsts.encode()))
    return headers


async def _send(scope: Scope, send: Send, answer: views.Answer) -> None:
    headers = [
        (b"Content-Type", answer.content_type.encode("latin-1")),
        (b"Content-Length", str(len(answer.body)).encode()),
        *((name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers),
        *_site_headers(scope),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


def _host_allowed(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    raw = headers.get(b"host")
    if raw is None:
        server = scope.get("server")
        return server is None or validate_host(str(server[0]), settings.ALLOWED_HOSTS)
    domain, _port = split_domain_port(raw.decode("latin-1"))
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


class _ClientLeft(Exception):
    """The client disconnected before its body was complete."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body; None when it passes limit. Raises _ClientLeft."""
    message = await receive()
    if message["type"] != "http.request":
        raise _ClientLeft
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        # The common case under daphne (dashboard.http_guard hands the body
        # over in one piece): no copy.
        return body if len(body) <= limit else None
    parts = [body]
    size = len(body)
    while size <= limit:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientLeft
        piece = message.get("body", b"")
        parts.append(piece)
        size += len(piece)
        if not message.get("more_body", False):
            return b"".join(parts) if size <= limit else None
    return None


async def receive_export(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one POST /v1/traces."""
    headers = dict(scope["headers"])  # names are lowercase in ASGI
    if not _host_allowed(scope, headers):
        # As Django answers a DisallowedHost.
        await _send(scope, send, views.Answer(400, b"Bad Request", "text/plain"))
        return
    content_type = views.media_type(headers.get(b"content-type", b"").decode("latin-1"))
    encoding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
    try:
        declared: int | None = int(headers.get(b"content-length", b"0"))
    except ValueError:
        declared = None
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    answer = views.check_request(content_type, encoding, authorization, declared)
    if answer is None:
        try:
            body = await _read_body(receive, settings.LOOMVIEW_OTLP_MAX_BODY_BYTES)
        except _ClientLeft:
            return
        if body is None:
            answer = views.too_large(content_type)
        else:
            answer = await views.export(body, content_type, encoding, _decode_in, _store_in)
    await _send(scope, send, answer)


class OtlpFastPath:
    """ASGI app: POST /v1/traces answered by receive_export, the rest by ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not _is_otlp(scope):
            await self.app(scope, receive, send)
            return
        try:
            await receive_export(scope, receive, send)
        except Exception:
            logger.exception("OTLP request failed")
            answer = views.Answer(500, b"Internal Server Error", "text/plain")
            # Fails when the response had started already.
            with contextlib.suppress(Exception):
                await _send(scope, send, answer)


def _is_otlp(scope: Scope) -> bool:
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return bool(path == PATH)

"""The OTLP/HTTP trace receiver: ``POST /v1/traces``.

Only HTTP lives here; decoding is tracing.otlp and storing is tracing.store.
Errors follow the OTLP/HTTP spec: a ``google.rpc.Status`` body in the
request's content type, 4xx for what retrying cannot fix, 503 for what it can.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from tracing import metrics, otlp, store
from tracing.groups import run_group, runs_group

logger = logging.getLogger(__name__)

# google.rpc.Code values used in error bodies.
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14
UNAUTHENTICATED = 16
# What a 503 asks exporters to wait before they retry.
RETRY_AFTER_SECONDS = 2


def _authorized(authorization: str, token: str) -> bool:
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


async def _publish(result: store.IngestResult) -> None:
    """Tell live pages about new spans; ingest has succeeded whatever happens here."""
    if not result.new_spans:
        return
    try:
        layer = get_channel_layer()
        if layer is None:
            return
        for (workflow_id, run_id), count in result.new_spans.items():
            await layer.group_send(
                run_group(workflow_id, run_id),
                {
                    "type": "run.spans",
                    "workflow_id": workflow_id,
                    "run_id": run_id,
                    "new_spans": count,
                    "summary": result.runs.get((workflow_id, run_id)),
                },
            )
        await layer.group_send(
            runs_group(),
            {
                "type": "runs.changed",
                "runs": [{"workflow_id": w, "run_id": r} for w, r in result.new_spans],
            },
        )
    except Exception:
        logger.warning("could not publish trace updates to the channel layer", exc_info=True)


@dataclass(frozen=True)
class Answer:
    """What the receiver answers, whichever front (Django view or tracing.asgi) asked."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


def _refusal(http_status: int, code: int, message: str, reply_type: str) -> Answer:
    return Answer(http_status, otlp.encode_status(code, message, reply_type), reply_type)


def media_type(header: str) -> str:
    """The media type of a Content-Type header, lowercased, without parameters."""
    return header.partition(";")[0].strip().lower()


def check_request(
    content_type: str, encoding: str, authorization: str, declared: int | None
) -> Answer | None:
    """The refusals decided from the headers alone, before the body is read."""
    reply_type = content_type if content_type in otlp.CONTENT_TYPES else otlp.JSON
    token = settings.LOOMVIEW_OTLP_TOKEN
    if token and not _authorized(authorization, token):
        answer = _refusal(401, UNAUTHENTICATED, "missing or wrong bearer token", reply_type)
        challenge = (("WWW-Authenticate", "Bearer"),)
        return Answer(answer.status, answer.body, answer.content_type, challenge)
    if content_type not in otlp.CONTENT_TYPES:
        message = f"unsupported content type {content_type!r}; send {otlp.PROTOBUF} or {otlp.JSON}"
        return _refusal(415, INVALID_ARGUMENT, message, reply_type)
    if encoding not in ("", "identity", "gzip"):
        message = f"unsupported Content-Encoding {encoding!r}; send gzip or none"
        return _refusal(415, INVALID_ARGUMENT, message, reply_type)
    limit = settings.LOOMVIEW_OTLP_MAX_BODY_BYTES
    if declared is not None and declared > limit:
        return too_large(content_type)
    return None


def too_large(content_type: str) -> Answer:
    limit = settings.LOOMVIEW_OTLP_MAX_BODY_BYTES
    return _refusal(413, RESOURCE_EXHAUSTED, f"body exceeds {limit} bytes", content_type)


def decode_body(body: bytes, content_type: str, encoding: str) -> otlp.DecodeResult:
    """Decompress (bounded by the body limit) and decode; raises otlp's errors."""
    if encoding == "gzip":
        body = otlp.gunzip(body, settings.LOOMVIEW_OTLP_MAX_BODY_BYTES)
    return otlp.decode(body, content_type)


# Runs a blocking function off the event loop: sync_to_async for the Django
# view (the test client's thread rules), an executor for tracing.asgi.
Offload = Callable[..., Awaitable[Any]]


async def export(
    body: bytes, content_type: str, encoding: str, decode_in: Offload, store_in: Offload
) -> Answer:
    """Decode and store one export request's body (its headers passed check_request)."""
    try:
        decoded: otlp.DecodeResult = await decode_in(decode_body, body, content_type, encoding)
    except otlp.BodyTooLarge as exc:
        return _refusal(413, RESOURCE_EXHAUSTED, str(exc), content_type)
    except otlp.DecodeError as exc:
        return _refusal(400, INVALID_ARGUMENT, str(exc), content_type)

    began = time.perf_counter()
    try:
        result: store.IngestResult = await store_in(store.ingest, decoded.rows)
    except DatabaseError:
        # Not the sender's fault (the database is locked, down or full):
        # exporters retry a 503, and the batch is stored whole or not at all.
        logger.exception("storing %d spans failed", len(decoded.rows))
        answer = _refusal(503, UNAVAILABLE, "span store unavailable, retry later", content_type)
        retry = (("Retry-After", str(RETRY_AFTER_SECONDS)),)
        return Answer(answer.status, answer.body, answer.content_type, retry)
    # Spans the database refused are reported like those the decoder refused.
    decoded.errors += result.rejected
    rejected = decoded.rejected + len(result.rejected)
    metrics.record_ingest(
        len(decoded.rows) + decoded.rejected,
        result.stored,
        result.duplicates,
        rejected,
        time.perf_counter() - began,
    )
    decoded.rejected = rejected
    if decoded.rejected:
        logger.info("OTLP export: %s", decoded.error_message())
    await _publish(result)
    response = otlp.encode_response(decoded.rejected, decoded.error_message(), content_type)
    return Answer(200, response, content_type)


async def _django_decode(function: Callable[..., Any], *args: Any) -> Any:
    return await sync_to_async(function, thread_sensitive=False)(*args)


async def _django_store(function: Callable[..., Any], *args: Any) -> Any:
    return await sync_to_async(function)(*args)


@csrf_exempt
@login_not_required
@require_POST
async def receive_traces(request: HttpRequest) -> HttpResponse:
    """The receiver behind Django's URLconf: the test client, and servers
    other than dashboard.asgi's application (which answers POST /v1/traces
    itself, tracing.asgi, without the middleware this path runs through)."""
    content_type = media_type(request.META.get("CONTENT_TYPE", ""))
    try:
        declared: int | None = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = None
    answer = check_request(
        content_type,
        request.headers.get("Content-Encoding", "").strip().lower(),
        request.headers.get("Authorization", ""),
        declared,
    )
    if answer is None:
        # Read the stream, not request.body: that would apply Django's form-upload
        # limit (DATA_UPLOAD_MAX_MEMORY_SIZE) instead of ours.
        limit = settings.LOOMVIEW_OTLP_MAX_BODY_BYTES
        body = request.read(limit + 1)
        if len(body) > limit:
            answer = too_large(content_type)
        else:
            encoding = request.headers.get("Content-Encoding", "").strip().lower()
            answer = await export(body, content_type, encoding, _django_decode, _django_store)
    response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    for name, value in answer.headers:
        response[name] = value
    return response

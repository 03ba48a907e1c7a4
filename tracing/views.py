"""The OTLP/HTTP trace receiver: ``POST /v1/traces``.

Only HTTP lives here; decoding is tracing.otlp and storing is tracing.store.
Errors follow the OTLP/HTTP spec: a ``google.rpc.Status`` body in the
request's content type, 4xx for what retrying cannot fix, 503 for what it can.
"""

from __future__ import annotations

import hmac
import logging
import time

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


def _status(http_status: int, code: int, message: str, content_type: str) -> HttpResponse:
    return HttpResponse(
        otlp.encode_status(code, message, content_type),
        status=http_status,
        content_type=content_type,
    )


def _authorized(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
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


@csrf_exempt
@login_not_required
@require_POST
async def receive_traces(request: HttpRequest) -> HttpResponse:
    content_type = request.content_type.lower() if request.content_type else ""
    reply_type = content_type if content_type in otlp.CONTENT_TYPES else otlp.JSON

    token = settings.LOOMVIEW_OTLP_TOKEN
    if token and not _authorized(request, token):
        response = _status(401, UNAUTHENTICATED, "missing or wrong bearer token", reply_type)
        response["WWW-Authenticate"] = "Bearer"
        return response
    if content_type not in otlp.CONTENT_TYPES:
        message = f"unsupported content type {content_type!r}; send {otlp.PROTOBUF} or {otlp.JSON}"
        return _status(415, INVALID_ARGUMENT, message, reply_type)
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip"):
        message = f"unsupported Content-Encoding {encoding!r}; send gzip or none"
        return _status(415, INVALID_ARGUMENT, message, reply_type)

    limit = settings.LOOMVIEW_OTLP_MAX_BODY_BYTES
    too_large = f"body exceeds {limit} bytes"
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return _status(413, RESOURCE_EXHAUSTED, too_large, reply_type)
    # Read the stream, not request.body: that would apply Django's form-upload
    # limit (DATA_UPLOAD_MAX_MEMORY_SIZE) instead of ours.
    body = request.read(limit + 1)
    if len(body) > limit:
        return _status(413, RESOURCE_EXHAUSTED, too_large, reply_type)

    try:
        if encoding == "gzip":
            body = otlp.gunzip(body, limit)
        decoded = await sync_to_async(otlp.decode, thread_sensitive=False)(body, content_type)
    except otlp.BodyTooLarge as exc:
        return _status(413, RESOURCE_EXHAUSTED, str(exc), reply_type)
    except otlp.DecodeError as exc:
        return _status(400, INVALID_ARGUMENT, str(exc), reply_type)

    began = time.perf_counter()
    try:
        result = await sync_to_async(store.ingest)(decoded.rows)
    except DatabaseError:
        # Not the sender's fault (the database is locked, down or full):
        # exporters retry a 503, and the batch is stored whole or not at all.
        logger.exception("storing %d spans failed", len(decoded.rows))
        response = _status(503, UNAVAILABLE, "span store unavailable, retry later", reply_type)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
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
    return HttpResponse(
        otlp.encode_response(decoded.rejected, decoded.error_message(), content_type),
        content_type=content_type,
    )

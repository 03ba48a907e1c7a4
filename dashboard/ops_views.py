"""Operations: what load balancers and monitoring ask, without a login."""

import logging

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)


@require_GET
@never_cache
@login_not_required
def healthz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        logger.exception("health check: database query failed")
        return JsonResponse({"status": "error", "database": "error"}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})


@require_GET
@login_not_required
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format: LOOMVIEW_METRICS_TOKEN as a bearer token, or an API
    token, or a signed-in session."""
    import hmac

    from prometheus_client import CONTENT_TYPE_LATEST

    from dashboard.auth import bearer_token, token_user
    from tracing import metrics as tracing_metrics

    given = bearer_token(request)
    token = settings.LOOMVIEW_METRICS_TOKEN
    allowed = (
        (bool(token) and hmac.compare_digest(given.encode(), token.encode()))
        or request.user.is_authenticated
        or token_user(given) is not None
    )
    if not allowed:
        response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="loomview"'
        return response
    return HttpResponse(tracing_metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

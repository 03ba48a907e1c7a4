import logging

from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_htmx.middleware import HtmxDetails

from dashboard import temporal

logger = logging.getLogger(__name__)


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


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
async def runs(request: HtmxHttpRequest) -> HttpResponse:
    address, namespace = temporal.target()
    ctx: dict[str, object] = {
        "runs": [],
        "temporal_address": address,
        "temporal_namespace": namespace,
        "temporal_error": None,
    }
    try:
        ctx["runs"] = await temporal.list_recent_runs()
    except temporal.TemporalUnavailable as exc:
        logger.warning("%s", exc)
        ctx["temporal_error"] = exc.reason
    template = "dashboard/runs.html#runs-panel" if request.htmx else "dashboard/runs.html"
    return render(request, template, ctx)

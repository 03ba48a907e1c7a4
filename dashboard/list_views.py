"""The runs list: the page, its htmx fragments and its JSON API."""

import logging
import time

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboard import runs as run_list
from dashboard import temporal
from dashboard.auth import bearer_token, token_user
from dashboard.htmx import HtmxHttpRequest
from dashboard.runs import RunFilterForm

logger = logging.getLogger(__name__)


FILTER_FIELDS = (
    "status", "type", "agent", "model", "queue", "range", "since", "until", "q", "failure",
)  # fmt: skip


def _page_url(request: HttpRequest, cursor: str | None) -> str:
    params = request.GET.copy()
    params.pop("cursor", None)
    if cursor:
        params["cursor"] = cursor
    return f"{request.path}?{params.urlencode()}" if params else request.path


@require_GET
async def runs(request: HtmxHttpRequest) -> HttpResponse:
    form = RunFilterForm(request.GET)
    # Invalid fields drop out of cleaned_data, so the valid ones still apply.
    valid = form.is_valid()
    filters = form.filters()
    page = await run_list.list_page(filters, form.cleaned_data.get("cursor"))
    address, namespace = temporal.target()
    live_params = request.GET.copy()
    live_params["rendered"] = str(time.time_ns())
    ctx: dict[str, object] = {
        "form": form,
        "page": page,
        "runs": page.rows,
        "next_url": _page_url(request, page.next_cursor) if page.next_cursor else None,
        "first_url": _page_url(request, None) if form.cleaned_data.get("cursor") else None,
        "temporal_address": address,
        "temporal_namespace": namespace,
        "temporal_error": page.temporal_error,
        "live_url": f"/ws/runs/?{live_params.urlencode()}",
        "filtered": any(request.GET.get(f) for f in FILTER_FIELDS),
        # The search the run links carry to the run page, which marks its matches.
        "search_text": filters.text,
    }
    if request.htmx:
        return render(request, "dashboard/runs.html#runs-panel", ctx, status=200 if valid else 400)
    return render(request, "dashboard/runs.html", ctx)


@require_GET
@login_not_required
async def api_runs(request: HttpRequest) -> JsonResponse:
    """The runs list as JSON; session login or `Authorization: Bearer <token>`."""
    user = await request.auser()
    if not user.is_authenticated and await sync_to_async(token_user)(bearer_token(request)) is None:
        response = JsonResponse({"error": "authentication required"}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="loomview"'
        return response
    form = RunFilterForm(request.GET)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    page = await run_list.list_page(form.filters(), form.cleaned_data.get("cursor"))
    next_url = _page_url(request, page.next_cursor) if page.next_cursor else None
    return JsonResponse(
        {
            "runs": [row.as_json() for row in page.rows],
            "next": request.build_absolute_uri(next_url) if next_url else None,
            "temporal_error": page.temporal_error,
        },
        json_dumps_params={"ensure_ascii": False},
    )

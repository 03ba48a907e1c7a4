"""The fleet overview page and its data (JSON, for the live refresh)."""

from __future__ import annotations

import time

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from dashboard import overview, temporal
from dashboard.overview import OverviewForm
from tracing import rollups


@require_GET
async def overview_page(request: HttpRequest) -> HttpResponse:
    form = OverviewForm(request.GET or None)
    valid = form.is_valid() if form.is_bound else True
    now = time.time_ns()
    temporal_error = await overview.sync_statuses(now)
    data = await sync_to_async(overview.build)(overview.query_from(form, now))
    address, _ = temporal.target()
    params = request.GET.urlencode()
    ctx = {
        "form": form,
        "data": data,
        "data_url": reverse("dash-overview-data") + (f"?{params}" if params else ""),
        "live_url": "/ws/overview/",
        "rollups_on": rollups.enabled(),
        "temporal_error": temporal_error,
        "temporal_address": address,
        "range_value": form.data.get("range") or overview.DEFAULT_RANGE,
    }
    return render(request, "dashboard/overview.html", ctx, status=200 if valid else 400)


@require_GET
async def overview_data(request: HttpRequest) -> JsonResponse:
    form = OverviewForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    now = time.time_ns()
    temporal_error = await overview.sync_statuses(now)
    data = await sync_to_async(overview.build)(overview.query_from(form, now))
    data["temporal_error"] = temporal_error
    return JsonResponse(data)

"""Exports: the collectors page, per-run export jobs and the OTLP JSON download."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Count, Min, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from dashboard import maintenance
from dashboard.action_views import _audit, _operator_or_403
from dashboard.htmx import HtmxHttpRequest
from dashboard.models import OPERATE_RUNS
from tracing import encode, exporters, forwarder, store
from tracing.models import ArchivedHistory, RunExport, RunSummary, ns_to_datetime


def _run_spans_or_404(workflow_id: str, run_id: str) -> list[dict[str, Any]]:
    rows = store.spans_for_run(workflow_id, run_id)
    if not rows:
        raise Http404("no spans stored for this run")
    return rows


def storage() -> dict[str, Any]:
    """Retention and the history archive, for the Exports page's Storage card."""
    jobs = maintenance.status()
    archived = ArchivedHistory.objects.aggregate(count=Count("id"), raw=Sum("size_bytes"))
    oldest = RunSummary.objects.aggregate(oldest=Min("last_span_ns"))["oldest"]
    return {
        "retention_days": settings.LOOMVIEW_RETENTION_DAYS,
        "audit_retention_days": settings.LOOMVIEW_AUDIT_RETENTION_DAYS,
        "archive_on": settings.LOOMVIEW_ARCHIVE_HISTORIES,
        "retention": jobs.get(maintenance.RETENTION),
        "archive": jobs.get(maintenance.ARCHIVE),
        "archived_count": archived["count"] or 0,
        "archived_bytes": archived["raw"] or 0,
        "oldest_run": ns_to_datetime(oldest),
        "runs": RunSummary.objects.count(),
    }


@require_GET
def exports(request: HtmxHttpRequest) -> HttpResponse:
    configured = exporters.configured()
    ctx = {
        "collectors": [forwarder.stats(e) for e in configured],
        "jobs": RunExport.objects.order_by("-id")[:20],
        "storage": storage(),
    }
    if request.htmx:
        return render(request, "dashboard/exports.html#collectors", ctx)
    return render(request, "dashboard/exports.html", ctx)


@require_GET
def run_otlp_json(request: HttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    rows = _run_spans_or_404(workflow_id, run_id)
    document = encode.to_json(encode.request_from_rows(rows))
    response = HttpResponse(
        json.dumps(document, ensure_ascii=False, separators=(",", ":")),
        content_type="application/json",
    )
    filename = quote(f"{workflow_id}-{run_id}.otlp.json", safe="")
    response["Content-Disposition"] = f"attachment; filename*=UTF-8''{filename}"
    return response


def _job_ctx(
    request: HttpRequest, workflow_id: str, run_id: str, job: RunExport | None
) -> dict[str, Any]:
    return {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "collectors": exporters.configured(),
        "job": job,
        "can_operate": request.user.has_perm(OPERATE_RUNS),
        "otlp_json_url": reverse("dash-run-otlp-json", args=[workflow_id, run_id]),
        "export_url": reverse("dash-run-export", args=[workflow_id, run_id]),
    }


@require_POST
async def run_export(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    """Send one run's spans to a collector: an operator's action, audited like the others."""
    user = await _operator_or_403(request, "export", workflow_id, run_id)
    collector = request.POST.get("collector", "")
    if exporters.by_name(collector) is None:
        message = f"unknown collector {collector!r}"
        await _audit(
            user, "export", workflow_id, run_id, {"collector": collector}, "error", message
        )
        ctx = await sync_to_async(_job_ctx)(request, workflow_id, run_id, None)
        ctx["error"] = message
        return render(request, "dashboard/_run_export.html", ctx, status=400)
    job = await sync_to_async(forwarder.enqueue_run_export)(workflow_id, run_id, collector)
    await _audit(
        user, "export", workflow_id, run_id, {"collector": collector, "job": job.id}, "ok",
        f"export job {job.id} to {collector}",
    )  # fmt: skip
    await forwarder.wake()
    if not request.htmx:
        return redirect(reverse("dash-run", args=[workflow_id, run_id]))
    ctx = await sync_to_async(_job_ctx)(request, workflow_id, run_id, job)
    return render(request, "dashboard/_run_export.html", ctx)


@require_GET
def run_export_job(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(RunExport, id=job_id)
    ctx = _job_ctx(request, job.workflow_id, job.run_id, job)
    return render(request, "dashboard/_run_export.html", ctx)


@require_GET
def run_export_panel(request: HttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    """The export box of the run page: the latest job of this run, if any."""
    job = RunExport.objects.filter(workflow_id=workflow_id, run_id=run_id).order_by("-id").first()
    return render(
        request, "dashboard/_run_export.html", _job_ctx(request, workflow_id, run_id, job)
    )

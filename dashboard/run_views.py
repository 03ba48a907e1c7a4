"""The run page's views: the page, a span's detail, the history download, the run API.

What they show is built in dashboard.run_page.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboard import auth, run_page, temporal
from dashboard.htmx import HtmxHttpRequest
from dashboard.run_page import Loaded
from tracing import store
from tracing.models import Span

logger = logging.getLogger(__name__)


# Turns one page of a conversation's transcript shows; "Show earlier turns" pages back.
TRANSCRIPT_PAGE = 100
# Which trace view the run page shows ("agent" or "raw"), remembered per browser.
TRACE_COOKIE = "loomview_trace"
TRACE_COOKIE_AGE = 365 * 24 * 3600


async def _run_or_404(workflow_id: str, run_id: str, *, complete: bool = False) -> Loaded:
    loaded = await run_page.load(workflow_id, run_id, complete=complete)
    if loaded.history is None and not loaded.spans:
        # Neither Temporal (or it is down) nor the store knows the run.
        raise Http404("no such run")
    return loaded


def _not_found(
    request: HttpRequest, workflow_id: str, run_id: str, temporal_error: str | None = None
) -> HttpResponse:
    ctx = {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "temporal_error": temporal_error,
        "temporal_address": temporal.target()[0],
    }
    return render(request, "dashboard/run_404.html", ctx, status=404)


@require_GET
async def run(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    history_mode = "full" if request.GET.get("history") == "full" else "compact"
    if request.htmx and request.GET.get("part") == "run-history":
        # The history section alone (switching views, or a long history loading
        # lazily): from the history, without the spans.
        ctx = await run_page.history_part(workflow_id, run_id, history_mode)
        return render(request, "dashboard/run.html#run-history", ctx)
    loaded = await run_page.load(workflow_id, run_id)
    if loaded.history is None and not loaded.spans:
        # Unknown to the store, and Temporal does not know it or cannot say.
        return _not_found(request, workflow_id, run_id, loaded.temporal_error)
    chosen = request.GET.get("trace", "")
    view = trace_view(request)
    big = run_page.is_big(loaded)
    # A search from the runs list: the spans that hold its words are marked.
    text, matched = await run_page.search_of(request.GET.get("q", ""), workflow_id, run_id)
    ctx = await run_page.build_kept(
        workflow_id,
        run_id,
        loaded,
        trace_view=view,
        marked=matched,
        # A history the page does not ask for by name loads when it is scrolled to.
        lazy_history="history" not in request.GET,
        search=text,
    )
    ctx["search_text"] = text
    ctx["search_matches"] = len(matched)
    del loaded
    ctx["history_mode"] = history_mode
    template = "dashboard/run.html"
    if request.htmx and request.GET.get("part") in ("run-header", "run-trace"):
        template = f"dashboard/run.html#{request.GET['part']}"
    response = render(request, template, ctx)
    if chosen in run_page.TRACE_VIEWS:
        response.set_cookie(TRACE_COOKIE, chosen, max_age=TRACE_COOKIE_AGE, samesite="Lax")
    if big:
        del ctx
        await sync_to_async(run_page.release_memory)()
    return response


def trace_view(request: HttpRequest) -> str:
    """The trace view asked for (``?trace=``), else the one this browser last chose."""
    for value in (request.GET.get("trace", ""), request.COOKIES.get(TRACE_COOKIE, "")):
        if value in run_page.TRACE_VIEWS:
            return value
    return "agent"


def _bounded_int(text: str, default: int, maximum: int) -> int:
    try:
        return min(max(int(text), 0), maximum)
    except ValueError:
        return default


@require_GET
async def run_trace(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    """The rows a trace node loads when it is opened, or a "Show more" row."""
    view = request.GET.get("view", "")
    if view not in run_page.TRACE_VIEWS:
        return HttpResponse("unknown trace view", status=400, content_type="text/plain")
    key = request.GET.get("node", "")[:300]
    offset = _bounded_int(request.GET.get("offset", "0"), 0, 10**7)
    depth = _bounded_int(request.GET.get("depth", "0"), 0, 10**4)
    try:
        loaded = await _run_or_404(workflow_id, run_id)
    except Http404:
        return _not_found(request, workflow_id, run_id)
    # The page's search: the rows loaded now are marked as the page's are.
    text, matched = await run_page.search_of(request.GET.get("q", ""), workflow_id, run_id)

    def rows() -> str:
        source, t0, t1, marked = run_page.trace_source(
            workflow_id, run_id, loaded, view, matched, text
        )
        if key and not source.children(key):
            raise Http404("no such node")
        return str(run_page.trace_children(source, key, offset, depth, t0, t1, marked))

    big = run_page.is_big(loaded)
    response = HttpResponse(await sync_to_async(rows)())
    if big:
        del loaded
        await sync_to_async(run_page.release_memory)()
    return response


@require_GET
async def call_detail(
    request: HtmxHttpRequest, workflow_id: str, run_id: str, activity_id: str
) -> HttpResponse:
    """One model call, its Temporal activity, attempts and generation merged."""
    attempt = request.GET.get("attempt", "")
    number = int(attempt) if attempt.isdigit() and len(attempt) < 6 else None
    try:
        loaded = await _run_or_404(workflow_id, run_id)
    except Http404:
        return _not_found(request, workflow_id, run_id)
    ctx = await sync_to_async(run_page.call_detail_ctx)(
        workflow_id, run_id, loaded, activity_id, number
    )
    if ctx is None:
        raise Http404("no such model call in this run")
    if request.htmx:
        return render(request, "dashboard/run_call.html#call-detail", ctx)
    return render(request, "dashboard/run_call.html", ctx)


@require_GET
async def conversation(request: HttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    """The run's conversation as a transcript, across its continue-as-new chain."""
    found = await run_page.conversation(workflow_id, run_id)
    if found is None:
        return _not_found(request, workflow_id, run_id)
    turns, runs = found
    # A bounded page: the latest turns, or those before ``?before=<turn number>``.
    before = request.GET.get("before", "")
    end = len(turns)
    if before.isdigit() and len(before) < 10:
        end = min(max(int(before) - 1, 0), len(turns))
    start = max(0, end - TRANSCRIPT_PAGE)
    shown = turns[start:end]
    ctx = {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "turns": shown,
        "turn_count": len(turns),
        "earlier": start,
        "later": len(turns) - end,
        "later_before": min(end + TRANSCRIPT_PAGE, len(turns)) + 1,
        "runs": runs,
        "run_ids": sorted({(t.workflow_id, t.run_id) for t in turns}),
        "tokens_in": sum(t.tokens_in for t in turns),
        "tokens_out": sum(t.tokens_out for t in turns),
    }
    return render(request, "dashboard/conversation.html", ctx)


def _span_for_run(workflow_id: str, run_id: str, span_id: str) -> dict[str, Any] | None:
    for span in Span.objects.filter(span_id=span_id):
        if (span.workflow_id, span.run_id) == (workflow_id, run_id):
            return store.span_row(span)
        if (
            not span.workflow_id
            and Span.objects.filter(
                trace_id=span.trace_id, workflow_id=workflow_id, run_id=run_id
            ).exists()
        ):
            return store.span_row(span)
    return None


@require_GET
async def span_detail(
    request: HtmxHttpRequest, workflow_id: str, run_id: str, span_id: str
) -> HttpResponse:
    span = await sync_to_async(_span_for_run)(workflow_id, run_id, span_id)
    if span is None:
        raise Http404("no such span in this run")
    ctx = run_page.span_detail_ctx(span)
    ctx.update({"workflow_id": workflow_id, "run_id": run_id})
    if request.htmx:
        return render(request, "dashboard/run_span.html#span-detail", ctx)
    return render(request, "dashboard/run_span.html", ctx)


@require_GET
async def history_json(request: HttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    try:
        history = await run_page.load_history(workflow_id, run_id)
    except temporal.TemporalUnavailable as exc:
        return JsonResponse({"error": f"Temporal is unreachable: {exc.reason}"}, status=503)
    if history is None:
        raise Http404("no such run")
    # Proto JSON, as `temporal workflow show -o json` and WorkflowHistory.to_json_dict give it.
    response = HttpResponse(
        json.dumps(run_page.to_json(history), indent=2), content_type="application/json"
    )
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in workflow_id)[:100]
    response["Content-Disposition"] = f'attachment; filename="{safe_name}-history.json"'
    return response


def _api_authenticated(request: HttpRequest) -> bool:
    return auth.api_user(request) is not None


@require_GET
@login_not_required
async def api_run(request: HttpRequest, workflow_id: str, run_id: str) -> JsonResponse:
    user_ok = await sync_to_async(_api_authenticated)(request)
    if not user_ok:
        response = JsonResponse({"error": "authentication required"}, status=401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    try:
        loaded = await _run_or_404(workflow_id, run_id, complete=True)
    except Http404:
        return JsonResponse({"error": "no such run"}, status=404)
    ctx = await run_page.build_kept(workflow_id, run_id, loaded)
    return JsonResponse(run_page.story_json(ctx), json_dumps_params={"ensure_ascii": False})

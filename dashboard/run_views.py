"""The run page: one Temporal run with its model calls, spans and history."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.cache import cache
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET
from django_htmx.middleware import HtmxDetails
from temporalio.api.history.v1 import History, HistoryEvent

from dashboard import auth, pricing, run_data, temporal
from tracing import store
from tracing.correlation import FAILED_OUTCOMES, ModelCall, correlate
from tracing.models import Span, ns_to_datetime

logger = logging.getLogger(__name__)

HISTORY_CACHE_SECONDS = 24 * 3600


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


@dataclass
class Loaded:
    history: History | None
    temporal_error: str | None
    spans: list[dict[str, Any]]

    @property
    def events(self) -> Sequence[HistoryEvent]:
        return self.history.events if self.history is not None else ()


def _cache_key(workflow_id: str, run_id: str) -> str:
    digest = hashlib.sha256(f"{workflow_id}\0{run_id}".encode()).hexdigest()
    # Serialized History protobuf: parsing it back is far faster than JSON.
    return f"loomview:history-pb:{digest}"


async def load_history(workflow_id: str, run_id: str) -> History | None:
    """A run's history, from cache once closed; None if Temporal has no such run.

    Raises temporal.TemporalUnavailable.
    """
    key = _cache_key(workflow_id, run_id)
    cached = await cache.aget(key)
    if isinstance(cached, bytes):
        return History.FromString(cached)
    try:
        fetched = await temporal.fetch_history(workflow_id, run_id)
    except temporal.RunNotFound:
        return None
    if fetched.closed:
        # A closed run's history never changes again.
        await cache.aset(key, fetched.history.SerializeToString(), HISTORY_CACHE_SECONDS)
    return fetched.history


async def load(workflow_id: str, run_id: str) -> Loaded:
    history: History | None = None
    error: str | None = None
    try:
        history = await load_history(workflow_id, run_id)
    except temporal.TemporalUnavailable as exc:
        logger.warning("%s", exc)
        error = exc.reason
    spans = await sync_to_async(store.spans_for_run)(workflow_id, run_id)
    return Loaded(history, error, spans)


def build(workflow_id: str, run_id: str, loaded: Loaded) -> dict[str, Any]:
    """Everything the run template renders, from history and spans."""
    events = loaded.events
    spans = loaded.spans
    story = correlate(events, spans)
    history = run_data.full_history(events)
    header = run_data.header_from_history(events)
    if not events:
        attrs: dict[str, Any] = next(
            (s["attributes"] for s in spans if not s["parent_span_id"]), {}
        )
        header.workflow_type = str(attrs.get("temporal.workflow.type", ""))
        header.task_queue = str(attrs.get("temporal.task_queue", ""))
    starts = [s["start_ns"] for s in spans]
    ends = [s["end_ns"] for s in spans]
    if events:
        # Events are in time order: the first and last bound the whole history.
        starts.append(history[0].ns)
        ends.append(history[-1].ns)
    t0 = min(starts) if starts else 0
    t1 = max([*ends, t0 + 1])
    if header.start_ns is None and spans:
        header.start_ns = t0
    totals = run_data.totals(story, len(spans))
    by_model: dict[str, tuple[int, int]] = {}
    for call in story.model_calls:
        tokens = by_model.get(call.model, (0, 0))
        by_model[call.model] = (
            tokens[0] + (call.tokens_in or 0),
            tokens[1] + (call.tokens_out or 0),
        )
    calls = story.model_calls
    cost = pricing.estimate(by_model, settings.LOOMVIEW_MODEL_PRICES) if calls else None
    totals.cost = cost.quantize(Decimal("0.0001")) if cost is not None else None
    namespace = temporal.target()[1]
    tree = run_data.span_tree(spans, t0, t1)
    span_base = reverse("dash-run-span", args=[workflow_id, run_id, "x"]).removesuffix("x/")
    return {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "namespace": namespace,
        "header": header,
        "start": ns_to_datetime(header.start_ns),
        "close": ns_to_datetime(header.close_ns),
        "duration_ms": (
            round((header.close_ns - header.start_ns) / 1e6)
            if header.close_ns is not None and header.start_ns is not None
            else None
        ),
        "input_json": run_data.pretty(header.input) if header.has_input else "",
        "result_json": run_data.pretty(header.result) if header.has_result else "",
        "totals": totals,
        "calls": calls,
        "timeline": run_data.timeline(story, t0, t1),
        "tree": tree,
        "tree_html": render_tree(tree, span_base),
        "history": history,
        "compact": run_data.compact_history(history),
        "has_history": loaded.history is not None,
        "live_sig": f"{-1 if loaded.history is None else len(events)}-{len(spans)}",
        "temporal_error": loaded.temporal_error,
        "temporal_address": temporal.target()[0],
        "is_open": header.is_open or (loaded.history is None and not header.close_ns),
        "temporal_link": (
            f"{settings.LOOMVIEW_TEMPORAL_UI_URL}/namespaces/{_q(namespace)}"
            f"/workflows/{_q(workflow_id)}/{_q(run_id)}/history"
        ),
    }


_ROW = (
    '<a class="span-row{error}" style="--depth:{depth}" href="{url}" hx-get="{url}"'
    ' hx-target="#span-panel" data-span="{id}"><span class="kind kind-{kind}">{kind}</span>'
    '<span class="span-name">{name}</span><span class="att">{attempt}</span>'
    '<span class="dur">{duration}</span>'
    '<span class="dbar"><i style="left:{offset}%;width:{width}%"></i></span></a>'
)


_BRANCH = (
    '<details class="node" open><summary>'
    '<i class="tw" style="--depth:{depth}" aria-hidden="true"></i>{link}</summary>'
)
_LEAF = '<div class="node leaf">{link}</div>'
_CLOSE = "</details>"


def render_tree(rows: list[run_data.TreeRow], span_base: str) -> SafeString:
    """The span tree as nested <details>; every value from a span is HTML-escaped.

    Built here rather than in the template, and with html.escape rather than
    format_html: a run with 500 model calls has thousands of spans, and either
    would spend most of the page's time on these rows. Every value taken from a
    span goes through ``escape``; only this function's constants do not.
    """
    parts: list[str] = []
    for row in rows:
        span = row.span
        attempt = f"#{span['activity_id']}·{span['attempt']}" if span["attempt"] else ""
        link = _ROW.format(
            error=" is-error" if span["status_code"] == 2 else "",
            depth=int(row.depth),
            url=escape(f"{span_base}{quote(span['span_id'], safe='')}/"),
            id=escape(span["span_id"]),
            kind=escape(span["kind"]),
            name=escape(span["name"]),
            attempt=escape(attempt) if span["activity_id"] else "",
            duration=escape(row.duration),
            offset=float(row.offset_pct),
            width=float(row.width_pct),
        )
        # The twisty sits outside the link, so clicking it folds the node.
        template = _BRANCH if row.has_children else _LEAF
        parts.append(template.format(depth=int(row.depth), link=link))
        parts.append(_CLOSE * len(row.closes))
    return SafeString("".join(parts))


def _q(part: str) -> str:
    return quote(part, safe="")


async def _run_or_404(workflow_id: str, run_id: str) -> Loaded:
    loaded = await load(workflow_id, run_id)
    if loaded.history is None and not loaded.spans and loaded.temporal_error is None:
        raise Http404("no such run")
    if loaded.history is None and not loaded.spans:
        # Temporal is down and we have nothing stored: still nothing to show.
        raise Http404("no such run")
    return loaded


def _not_found(request: HttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    ctx = {"workflow_id": workflow_id, "run_id": run_id}
    return render(request, "dashboard/run_404.html", ctx, status=404)


@require_GET
async def run(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    try:
        loaded = await _run_or_404(workflow_id, run_id)
    except Http404:
        return _not_found(request, workflow_id, run_id)
    ctx = await sync_to_async(build)(workflow_id, run_id, loaded)
    ctx["history_mode"] = "full" if request.GET.get("history") == "full" else "compact"
    template = "dashboard/run.html"
    if request.htmx and request.GET.get("part") in ("run-header", "run-history", "run-trace"):
        template = f"dashboard/run.html#{request.GET['part']}"
    return render(request, template, ctx)


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


def span_detail_ctx(span: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = span.get("attributes") or {}

    def first(*names: str) -> Any:
        for name in names:
            if name in attrs:
                return run_data.maybe_json(attrs[name])
        return None

    sections = [
        ("Input messages", first("gen_ai.input.messages", "input.value")),
        ("Output", first("gen_ai.output.messages", "output.value")),
        ("Tool arguments", first("gen_ai.tool.call.arguments")),
        ("Tool result", first("gen_ai.tool.call.result")),
    ]
    if span["kind"] == "function":
        # For tools input.value/output.value repeat arguments and result.
        sections = sections[2:]
    return {
        "span": span,
        "duration_ms": round((span["end_ns"] - span["start_ns"]) / 1e6, 2),
        "start": ns_to_datetime(span["start_ns"]),
        "sections": [
            (title, value if isinstance(value, str) else run_data.pretty(value))
            for title, value in sections
            if value not in (None, "", [])
        ],
        "attributes": sorted((k, str(v)) for k, v in attrs.items()),
        "events": run_data.pretty(span.get("events")) if span.get("events") else "",
        "resource": sorted((k, str(v)) for k, v in (span.get("resource") or {}).items()),
    }


@require_GET
async def span_detail(
    request: HtmxHttpRequest, workflow_id: str, run_id: str, span_id: str
) -> HttpResponse:
    span = await sync_to_async(_span_for_run)(workflow_id, run_id, span_id)
    if span is None:
        raise Http404("no such span in this run")
    ctx = span_detail_ctx(span)
    ctx.update({"workflow_id": workflow_id, "run_id": run_id})
    if request.htmx:
        return render(request, "dashboard/run_span.html#span-detail", ctx)
    return render(request, "dashboard/run_span.html", ctx)


@require_GET
async def history_json(request: HttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    try:
        history = await load_history(workflow_id, run_id)
    except temporal.TemporalUnavailable as exc:
        return JsonResponse({"error": f"Temporal is unreachable: {exc.reason}"}, status=503)
    if history is None:
        raise Http404("no such run")
    # Proto JSON, as `temporal workflow show -o json` and WorkflowHistory.to_json_dict give it.
    response = HttpResponse(
        json.dumps(run_data.to_json(history), indent=2), content_type="application/json"
    )
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in workflow_id)[:100]
    response["Content-Disposition"] = f'attachment; filename="{safe_name}-history.json"'
    return response


def _api_authenticated(request: HttpRequest) -> bool:
    return auth.api_user(request) is not None


def story_json(ctx: dict[str, Any]) -> dict[str, Any]:
    header: run_data.Header = ctx["header"]
    totals: run_data.Totals = ctx["totals"]
    calls: list[ModelCall] = ctx["calls"]
    return {
        "workflow_id": ctx["workflow_id"],
        "run_id": ctx["run_id"],
        "status": header.status,
        "workflow_type": header.workflow_type,
        "task_queue": header.task_queue,
        "start_time": ctx["start"].isoformat() if ctx["start"] else None,
        "close_time": ctx["close"].isoformat() if ctx["close"] else None,
        "input": header.input,
        "result": header.result,
        "failure": header.failure or None,
        "temporal_error": ctx["temporal_error"],
        "totals": {
            "model_calls": totals.model_calls,
            "attempts": totals.attempts,
            "failed_attempts": totals.failed_attempts,
            "tokens_in": totals.tokens_in,
            "tokens_out": totals.tokens_out,
            "cost_usd": str(totals.cost) if totals.cost is not None else None,
            "spans": totals.spans,
        },
        "model_calls": [
            {
                "activity_id": c.activity_id,
                "agent": c.agent,
                "model": c.model,
                "tokens_in": c.tokens_in,
                "tokens_out": c.tokens_out,
                "outcome": c.outcome,
                "matched": c.matched,
                "scheduled_time": _iso(c.scheduled_ns),
                "closed_time": _iso(c.closed_ns),
                "attempts": [
                    {
                        "attempt": a.number,
                        "outcome": a.outcome,
                        "start_time": _iso(a.start_ns),
                        "end_time": _iso(a.end_ns),
                        "failed": a.outcome in FAILED_OUTCOMES,
                        "error": a.failure or None,
                        "span_id": a.model_span_id or next(iter(a.span_ids), None),
                        "matched": a.matched,
                    }
                    for a in c.attempts
                ],
            }
            for c in calls
        ],
        "spans": [
            {
                "trace_id": r.span["trace_id"],
                "span_id": r.span["span_id"],
                "parent_span_id": r.span["parent_span_id"] or None,
                "name": r.span["name"],
                "kind": r.span["kind"],
                "start_time": _iso(r.span["start_ns"]),
                "end_time": _iso(r.span["end_ns"]),
                "status_code": r.span["status_code"],
                "status_message": r.span["status_message"] or None,
                "activity_id": r.span["activity_id"] or None,
                "attempt": r.span["attempt"],
                "agent": r.span["agent"] or None,
                "model": r.span["model"] or None,
                "tokens_in": r.span["tokens_in"],
                "tokens_out": r.span["tokens_out"],
            }
            for r in ctx["tree"]
        ],
    }


def _iso(ns: int | None) -> str | None:
    moment = ns_to_datetime(ns)
    return moment.isoformat() if moment else None


@require_GET
@login_not_required
async def api_run(request: HttpRequest, workflow_id: str, run_id: str) -> JsonResponse:
    user_ok = await sync_to_async(_api_authenticated)(request)
    if not user_ok:
        response = JsonResponse({"error": "authentication required"}, status=401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    try:
        loaded = await _run_or_404(workflow_id, run_id)
    except Http404:
        return JsonResponse({"error": "no such run"}, status=404)
    ctx = await sync_to_async(build)(workflow_id, run_id, loaded)
    return JsonResponse(story_json(ctx), json_dumps_params={"ensure_ascii": False})


def run_url(workflow_id: str, run_id: str) -> str:
    return reverse("dash-run", args=[workflow_id, run_id])

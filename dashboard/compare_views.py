"""Comparing runs: the compare page, "the previous run of this type", the run page's compare panel.

What the page shows is built in dashboard.compare.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from dashboard import actions, compare, replays, run_page, temporal
from dashboard.htmx import HtmxHttpRequest
from tracing.models import RunSummary

logger = logging.getLogger(__name__)
# Runs fetched from visibility to find the latest one before a start time:
# SQL visibility has no ORDER BY, so the newest of a small page is taken.
PREVIOUS_CANDIDATES = 20


def _form(request: HttpRequest, error: str = "", status: int = 200) -> HttpResponse:
    ctx = {"error": error, "a": request.GET.get("a", ""), "b": request.GET.get("b", "")}
    return render(request, "dashboard/compare_form.html", ctx, status=status)


@require_GET
async def compare_page(request: HtmxHttpRequest) -> HttpResponse:
    picked = request.GET.getlist("run")
    if picked:
        # From the runs list's checkboxes, newest first: the older run is A.
        if len(picked) != 2:
            return _form(request, "Pick exactly two runs to compare.", 400)
        try:
            newer, older = compare.parse_ref(picked[0]), compare.parse_ref(picked[1])
        except compare.BadRunRef as exc:
            return _form(request, str(exc), 400)
        return redirect(compare.compare_url(older, newer))
    if not request.GET.get("a") or not request.GET.get("b"):
        return _form(request)
    try:
        a_ref = compare.parse_ref(request.GET["a"])
        b_ref = compare.parse_ref(request.GET["b"])
    except compare.BadRunRef as exc:
        return _form(request, str(exc), 400)
    a_loaded, b_loaded = await asyncio.gather(run_page.load(*a_ref), run_page.load(*b_ref))
    missing = [
        (label, run_ref)
        for label, run_ref, loaded in (("A", a_ref, a_loaded), ("B", b_ref, b_loaded))
        if loaded.history is None and not loaded.spans
    ]
    if missing:
        ctx = {"missing": missing, "a": request.GET["a"], "b": request.GET["b"]}
        return render(request, "dashboard/compare_form.html", ctx, status=404)
    ctx = await sync_to_async(compare.compare)(
        a_ref,
        a_loaded,
        b_ref,
        b_loaded,
        all_events=request.GET.get("events") == "all",
        all_calls=request.GET.get("calls") == "all",
    )
    ctx["query_a"], ctx["query_b"] = compare.ref(*a_ref), compare.ref(*b_ref)
    if request.htmx and request.GET.get("part") == "cmp-events":
        return render(request, "dashboard/compare.html#cmp-events", ctx)
    return render(request, "dashboard/compare.html", ctx)


async def _previous_in_temporal(
    workflow_type: str, before: datetime, exclude: tuple[str, str]
) -> tuple[str, str] | None:
    query = (
        f"WorkflowType = {temporal.quote(workflow_type)} "
        f"AND StartTime < {temporal.quote(before.strftime('%Y-%m-%dT%H:%M:%S.%fZ'))}"
    )
    runs = await temporal.list_runs(query, PREVIOUS_CANDIDATES)
    runs = [r for r in runs if (r.workflow_id, r.run_id) != exclude]
    if not runs:
        return None
    latest = max(runs, key=lambda r: r.start_time)
    return latest.workflow_id, latest.run_id


def _previous_in_store(
    workflow_type: str, before_ns: int, exclude: tuple[str, str]
) -> tuple[str, str] | None:
    rows = RunSummary.objects.filter(
        workflow_type=workflow_type, first_span_ns__lt=before_ns
    ).order_by("-first_span_ns")
    for row in rows[:5]:
        if (row.workflow_id, row.run_id) != exclude:
            return row.workflow_id, row.run_id
    return None


async def previous_run(workflow_id: str, run_id: str) -> tuple[str, tuple[str, str] | None]:
    """The run's workflow type, and the latest run of that type that started before it."""
    loaded = await run_page.load(workflow_id, run_id)
    header = run_page.header_from_history(loaded.events)
    workflow_type = header.workflow_type
    start_ns = header.start_ns
    summary = await RunSummary.objects.filter(workflow_id=workflow_id, run_id=run_id).afirst()
    if not workflow_type and summary is not None:
        workflow_type = summary.workflow_type
    if start_ns is None and summary is not None:
        start_ns = summary.first_span_ns
    if not workflow_type or start_ns is None:
        return workflow_type, None
    this = (workflow_id, run_id)
    if loaded.temporal_error is None and loaded.history is not None:
        try:
            found = await _previous_in_temporal(
                workflow_type, datetime.fromtimestamp(start_ns / 1e9, UTC), this
            )
        except (temporal.TemporalUnavailable, ValueError) as exc:
            logger.info("previous run from visibility failed: %s", exc)
        else:
            if found is not None:
                return workflow_type, found
    return workflow_type, await sync_to_async(_previous_in_store)(workflow_type, start_ns, this)


@require_GET
async def compare_previous(request: HttpRequest) -> HttpResponse:
    """Redirects to the comparison of a run with the previous run of its type."""
    try:
        this = compare.parse_ref(request.GET.get("run", ""))
    except compare.BadRunRef as exc:
        return _form(request, str(exc), 400)
    workflow_type, previous = await previous_run(*this)
    if previous is None:
        kind = f"{workflow_type} " if workflow_type else ""
        ctx = {"error": f"No earlier {kind}run to compare with.", "b": compare.ref(*this), "a": ""}
        return render(request, "dashboard/compare_form.html", ctx, status=404)
    return redirect(compare.compare_url(previous, this))


def _panel_links(workflow_id: str, run_id: str, base_run_id: str | None) -> list[dict[str, Any]]:
    this = (workflow_id, run_id)
    links = []
    for link in actions.run_links(workflow_id, run_id, base_run_id):
        other = (link.workflow_id, link.run_id)
        # The run that came first is A.
        earlier = link.label in ("Reset from", "Run again of")
        label = {
            "Reset from": "Compare with the run it was reset from",
            "Run again of": "Compare with the original",
            "Reset to": "Compare with its reset",
            "Run again as": "Compare with the run again",
        }.get(link.label, f"Compare with {link.label.lower()}")
        url = compare.compare_url(other, this) if earlier else compare.compare_url(this, other)
        links.append({"label": label, "url": url, "workflow_id": link.workflow_id})
    return links


@require_GET
async def run_compare_panel(
    request: HtmxHttpRequest, workflow_id: str, run_id: str
) -> HttpResponse:
    """The run page's Compare & replays card: how to compare this run, and its replays."""
    events: list[Any] = []
    try:
        history = await run_page.load_history(workflow_id, run_id)
        events = list(history.events) if history is not None else []
    except temporal.TemporalUnavailable:
        pass
    ctx = {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "this_ref": compare.ref(workflow_id, run_id),
        "links": await sync_to_async(_panel_links)(workflow_id, run_id, actions.reset_from(events)),
        "replays": [
            await replays.refresh(replay) if replay.is_pending else replay
            for replay in await sync_to_async(replays.for_run)(workflow_id, run_id)
        ],
    }

    if request.htmx:
        return render(request, "dashboard/_run_compare.html#compare-card", ctx)
    return render(request, "dashboard/run_compare.html", ctx)

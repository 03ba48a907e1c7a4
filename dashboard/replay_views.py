"""Replaying a model call: the editor, the replay page, and two replays side by side.

Starting a replay is an action like any other: a POST by an operator with a
CSRF token, checked whole before anything reaches Temporal, and audited
whatever its outcome. What is shown is built in dashboard.replays.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from dashboard import replays, temporal
from dashboard.action_views import _audit, _operator_or_403
from dashboard.htmx import HtmxHttpRequest
from dashboard.models import OPERATE_RUNS, Replay

FIELDS = ("model", "system", "input", "settings", "task_queue")


async def _call_or_404(workflow_id: str, run_id: str, activity_id: str) -> replays.CallSource:
    try:
        source = await replays.load_call(workflow_id, run_id, activity_id)
    except temporal.TemporalUnavailable as exc:  # load() keeps going without Temporal
        raise Http404(str(exc)) from None
    if source is None:
        raise Http404("no such model call in this run")
    return source


def _editor_ctx(source: replays.CallSource, values: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "source": source,
        "values": values,
        "errors": {},
        "error": "",
        "original_output": replays.diffs.messages(source.output),
        "original_cost": replays.cost(source.model, source.tokens_in, source.tokens_out),
        **extra,
    }


@require_http_methods(["GET", "POST"])
@login_required
async def call_replay(
    request: HtmxHttpRequest, workflow_id: str, run_id: str, activity_id: str
) -> HttpResponse:
    """GET: the call's input, model and settings in an editor; POST (operators): replay it."""
    if request.method == "POST":
        return await _start_replay(request, workflow_id, run_id, activity_id)
    user = await request.auser()
    source = await _call_or_404(workflow_id, run_id, activity_id)
    ctx = _editor_ctx(
        source,
        replays.initial(source),
        can_operate=await user.ahas_perm(OPERATE_RUNS),
        earlier=await _earlier(workflow_id, run_id, activity_id),
    )
    return render(request, "dashboard/replay_new.html", ctx)


async def _earlier(workflow_id: str, run_id: str, activity_id: str) -> list[Replay]:
    rows = Replay.objects.filter(workflow_id=workflow_id, run_id=run_id, activity_id=activity_id)
    return [r async for r in rows[:20]]


async def _start_replay(
    request: HttpRequest, workflow_id: str, run_id: str, activity_id: str
) -> HttpResponse:
    user = await _operator_or_403(request, "replay", workflow_id, run_id)
    values = {name: request.POST.get(name, "") for name in FIELDS}
    payload: dict[str, Any] = {"activity_id": activity_id, "task_queue": values["task_queue"]}
    source = await _call_or_404(workflow_id, run_id, activity_id)
    payload["call"] = source.number
    try:
        edits = replays.check(values)
    except replays.InvalidReplay as exc:
        await _audit(user, "replay", workflow_id, run_id, payload, "error", str(exc))
        ctx = _editor_ctx(source, values, can_operate=True, errors={exc.field: str(exc)})
        return render(request, "dashboard/replay_new.html", ctx, status=400)
    payload.update({"model": edits.model, "edited": replays.edited_fields(source, edits)})
    username = user.get_username()
    try:
        replay = await replays.start(temporal.identity_for(username), username, user, source, edits)
    except (temporal.ActionFailed, temporal.TemporalUnavailable) as exc:
        await _audit(user, "replay", workflow_id, run_id, payload, "error", str(exc))
        ctx = _editor_ctx(source, values, can_operate=True, error=f"Not replayed: {exc}")
        return render(request, "dashboard/replay_new.html", ctx, status=502)
    payload["replay"] = replay.pk
    await _audit(
        user,
        "replay",
        workflow_id,
        run_id,
        payload,
        "ok",
        f"replayed model call {source.number} as replay {replay.pk}",
        new_workflow_id=replay.replay_workflow_id,
        new_run_id=replay.replay_run_id,
    )
    return redirect(reverse("dash-replay", args=[replay.pk]))


async def _replay_or_404(pk: int) -> Replay:
    replay = await Replay.objects.filter(pk=pk).afirst()
    if replay is None:
        raise Http404("no such replay")
    return await replays.refresh(replay)


@require_GET
async def replay_page(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    replay = await _replay_or_404(pk)
    ctx: dict[str, Any] = {
        "replay": replay,
        "run_url": reverse("dash-run", args=[replay.workflow_id, replay.run_id]),
        **replays.side_by_side(replays.original_column(replay), replays.replay_column(replay)),
        "others": [
            r
            async for r in Replay.objects.filter(
                workflow_id=replay.workflow_id,
                run_id=replay.run_id,
                activity_id=replay.activity_id,
            ).exclude(pk=replay.pk)[:20]
        ],
    }
    if request.htmx and request.GET.get("part") == "replay-result":
        return render(request, "dashboard/replay.html#replay-result", ctx)
    return render(request, "dashboard/replay.html", ctx)


@require_GET
async def replays_compare(request: HttpRequest) -> HttpResponse:
    """Two replays (of the same call or not) side by side."""
    picked = request.GET.getlist("r") or [request.GET.get("a", ""), request.GET.get("b", "")]
    try:
        a_pk, b_pk = (int(value) for value in picked)
    except ValueError:
        return HttpResponse("Pick two replays to compare.", status=400, content_type="text/plain")
    a, b = await _replay_or_404(a_pk), await _replay_or_404(b_pk)
    ctx = {
        "a": a,
        "b": b,
        **replays.side_by_side(replays.replay_column(a), replays.replay_column(b)),
    }
    return render(request, "dashboard/replay_compare.html", ctx)

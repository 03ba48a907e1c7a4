"""Acting on runs: signal, query, update, reset, run again, cancel, terminate, start; the audit log.

Every action is a POST by a signed-in operator (dashboard.operate_runs). It is
validated whole before anything reaches Temporal, sent with the user's
identity, and recorded in the audit log whatever its outcome.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect
from temporalio.api.history.v1 import HistoryEvent
from temporalio.common import RawValue

from dashboard import actions, run_page, temporal, waiting
from dashboard.htmx import HtmxHttpRequest
from dashboard.models import OPERATE_RUNS, AuditEntry
from worker.faults import FaultSpecError, parse_faults
from worker.inputs import input_for

AUDIT_PAGE_SIZE = 25
RUN_AUDIT_ROWS = 8


async def _operator_or_403(
    request: HttpRequest, action: str, workflow_id: str = "", run_id: str = ""
) -> User:
    """The signed-in operator; anyone else is refused (and the refusal audited)."""
    user = await request.auser()
    if not await user.ahas_perm(OPERATE_RUNS):
        await _audit(
            user, action, workflow_id, run_id, {}, AuditEntry.Outcome.DENIED, "not an operator"
        )
        raise PermissionDenied("acting on runs needs the operator role")
    assert isinstance(user, User)
    return user


async def _audit(
    user: User | AnonymousUser,
    action: str,
    workflow_id: str,
    run_id: str,
    payload: dict[str, Any],
    outcome: str,
    message: str = "",
    new_workflow_id: str = "",
    new_run_id: str = "",
) -> AuditEntry:
    return await AuditEntry.objects.acreate(
        user=user if user.is_authenticated else None,
        username=user.get_username(),
        action=action,
        workflow_id=workflow_id,
        run_id=run_id,
        payload=payload,
        outcome=outcome,
        message=message[:4000],
        new_workflow_id=new_workflow_id,
        new_run_id=new_run_id,
    )


@dataclass
class _Action:
    """One operator action on one run, as the audit log records it."""

    request: HtmxHttpRequest
    user: User
    name: str
    workflow_id: str
    run_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    # A query only looks: the audit log is for what changes a run (a viewer's
    # refused query is still recorded, as every refusal is).
    audited: bool = True

    async def done(self, message: str = "", **new_run: str) -> None:
        if not self.audited:
            return
        await _audit(
            self.user,
            self.name,
            self.workflow_id,
            self.run_id,
            self.payload,
            AuditEntry.Outcome.OK,
            message,
            **new_run,
        )

    async def failed(self, message: str, **panel: Any) -> HttpResponse:
        """Audit the refusal or failure, then show the Actions card saying why."""
        if self.audited:
            await _audit(
                self.user,
                self.name,
                self.workflow_id,
                self.run_id,
                self.payload,
                AuditEntry.Outcome.ERROR,
                message,
            )
        return await _panel(self.request, self.workflow_id, self.run_id, **panel)


async def _history_or_none(workflow_id: str, run_id: str) -> list[HistoryEvent] | None:
    history = await run_page.load_history(workflow_id, run_id)
    return list(history.events) if history is not None else None


def _run_audit(workflow_id: str, run_id: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(workflow_id=workflow_id, run_id=run_id)[:RUN_AUDIT_ROWS])


async def _panel_ctx(
    request: HttpRequest,
    workflow_id: str,
    run_id: str,
    *,
    tab: str = "",
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    notice: str = "",
    error: str = "",
    result: str = "",
) -> dict[str, Any]:
    """Everything the Actions card shows for one run."""
    user = await request.auser()
    can_operate = await user.ahas_perm(OPERATE_RUNS)
    ctx: dict[str, Any] = {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "can_operate": can_operate,
        "values": values or {},
        "errors": errors or {},
        "notice": notice,
        "error": error,
        "result": result,
        "temporal_error": "",
        "definitions": None,
    }
    events: list[HistoryEvent] = []
    try:
        events = await _history_or_none(workflow_id, run_id) or []
    except temporal.TemporalUnavailable as exc:
        # The page's banner has the reason; here, what it means for acting.
        ctx["temporal_error"] = (
            f"Temporal is unreachable at {exc.address}: no action can reach this run until it"
            " answers."
        )
    header = run_page.header_from_history(events)
    is_open = bool(events) and header.is_open
    definitions = None
    if can_operate and events:
        definitions = await waiting.declared_handlers(workflow_id, run_id, is_open)
    username = user.get_username()
    ctx.update(
        {
            "has_history": bool(events),
            "status": header.status if events else "",
            "is_open": is_open,
            "workflow_type": header.workflow_type,
            "definitions": definitions,
            "reset_points": actions.reset_points(events),
            "can_run_again": actions.started_with(events) is not None,
            "can_edit_input": header.workflow_type in BUNDLED,
            "links": await sync_to_async(actions.run_links)(
                workflow_id, run_id, actions.reset_from(events)
            ),
            "audit": await sync_to_async(_run_audit)(workflow_id, run_id),
            "audit_url": f"{reverse('dash-audit')}?run={run_id}",
        }
    )
    ctx["handler_forms"] = {
        kind: _handler_form(
            kind,
            # A form never offers a destructive handler (``end``, ``reject``) first.
            actions.examples_for(header.workflow_type, kind, waiting.safe_first(names), username),
            ctx["values"],
            ctx["errors"],
        )
        for kind, names in (
            ("signal", definitions.signals if definitions else []),
            ("query", definitions.queries if definitions else []),
            ("update", definitions.updates if definitions else []),
        )
    }
    tabs = ["signal", "query", "update", "retry", "stop"] if is_open else ["query", "retry"]
    ctx["tabs"] = tabs
    # Open: the first thing one usually does; closed: retry.
    default = (
        ("signal" if definitions is None or definitions.signals else "stop") if is_open else "retry"
    )
    ctx["tab"] = tab if tab in tabs else default
    return ctx


def _handler_form(
    kind: str, handlers: list[Any], values: dict[str, str], errors: dict[str, str]
) -> dict[str, Any]:
    """One signal/query/update form: the chosen name, its payload (or the example), its error."""
    name = values.get(f"{kind}_name") or (handlers[0][0] if handlers else "")
    payload = values.get(f"{kind}_payload")
    if payload is None:
        payload = dict(handlers).get(name, "")
    return {"handlers": handlers, "name": name, "payload": payload, "error": errors.get(kind, "")}


async def _panel(
    request: HtmxHttpRequest, workflow_id: str, run_id: str, **kw: Any
) -> HttpResponse:
    """The card after an action: the fragment for htmx, else back to the run page."""
    status = 400 if kw.get("errors") else 200
    if not request.htmx:
        if status == 200 and not kw.get("error") and not kw.get("result"):
            return redirect(reverse("dash-run", args=[workflow_id, run_id]))
        ctx = await _panel_ctx(request, workflow_id, run_id, **kw)
        return render(request, "dashboard/run_actions.html", ctx, status=status)
    ctx = await _panel_ctx(request, workflow_id, run_id, **kw)
    # htmx swaps only 2xx responses: the form errors ride in a 200.
    return render(request, "dashboard/run_actions.html#actions-card", ctx)


@require_GET
@login_required
async def run_actions(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    tab = request.GET.get("tab", "")
    # "What it waits for" links a declared handler: its form opens with it chosen.
    name = request.GET.get("name", "")[:200]
    values = {f"{tab}_name": name} if tab in ("signal", "query", "update") and name else {}
    ctx = await _panel_ctx(request, workflow_id, run_id, tab=tab, values=values)
    if request.htmx:
        return render(request, "dashboard/run_actions.html#actions-card", ctx)
    return render(request, "dashboard/run_actions.html", ctx)


@require_GET
@login_required
async def run_now(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    """Pending activities and the stack trace of an open run; polled while it runs."""
    pending_only = request.GET.get("part") == "pending"
    ctx: dict[str, Any] = {"workflow_id": workflow_id, "run_id": run_id, "now": None, "error": ""}
    try:
        ctx["now"] = await temporal.run_now(workflow_id, run_id, with_stack=not pending_only)
    except temporal.TemporalUnavailable as exc:
        ctx["error"] = (
            f"Temporal is unreachable at {exc.address}: pending activities and the stack"
            " trace come from it."
        )
    except temporal.RunNotFound:
        ctx["error"] = "Temporal does not know this run."
    if request.htmx:
        part = "run-pending" if pending_only else "run-now"
        return render(request, f"dashboard/run_actions.html#{part}", ctx)
    return render(request, "dashboard/run_actions.html", {**ctx, "now_only": True})


@require_GET
@login_required
async def run_handlers(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    """The signals and updates an open run declares, each a link to its form."""
    ctx: dict[str, Any] = {"workflow_id": workflow_id, "run_id": run_id, "error": ""}
    definitions = None
    try:
        definitions = await waiting.declared_handlers(workflow_id, run_id, is_open=True)
    except temporal.TemporalUnavailable as exc:
        ctx["error"] = f"Temporal is unreachable at {exc.address}."
    ctx["definitions"] = definitions
    ctx["handlers"] = [
        (kind, name, waiting.is_destructive(name))
        for kind, names in (
            ("signal", definitions.signals if definitions else []),
            ("update", definitions.updates if definitions else []),
        )
        for name in waiting.safe_first(names)
    ]
    return render(request, "dashboard/_run_handlers.html", ctx)


async def _handler_action(
    request: HtmxHttpRequest, workflow_id: str, run_id: str, kind: str
) -> HttpResponse:
    """Signal, query or update: a declared handler name and a JSON argument."""
    user = await _operator_or_403(request, kind, workflow_id, run_id)
    name = request.POST.get("name", "")
    raw = request.POST.get("payload", "")
    values = {f"{kind}_name": name, f"{kind}_payload": raw}
    act = _Action(
        request, user, kind, workflow_id, run_id, {"name": name, "payload": raw},
        audited=kind != "query",
    )  # fmt: skip
    identity = temporal.identity_for(user.get_username())
    try:
        argument = actions.parse_payload(raw)
        act.payload["payload"] = argument
        definitions = await waiting.declared_handlers(workflow_id, run_id, is_open=True)
        known = None
        if definitions is not None:
            known = {"signal": definitions.signals, "query": definitions.queries}.get(
                kind, definitions.updates
            )
        name = actions.check_name(kind, name, known)
    except actions.InvalidAction as exc:
        return await act.failed(str(exc), tab=kind, values=values, errors={kind: str(exc)})
    except temporal.TemporalUnavailable as exc:
        return await act.failed(str(exc), tab=kind, values=values, error=str(exc))
    try:
        if kind == "signal":
            await temporal.send_signal(identity, workflow_id, run_id, name, argument)
            outcome = ""
        elif kind == "query":
            outcome = run_page.pretty(
                await temporal.run_query(identity, workflow_id, run_id, name, argument)
            )
        else:
            outcome = run_page.pretty(
                await temporal.run_update(identity, workflow_id, run_id, name, argument)
            )
    except (temporal.ActionFailed, temporal.TemporalUnavailable) as exc:
        return await act.failed(str(exc), tab=kind, values=values, error=f"{name}: {exc}")
    await act.done(outcome)
    if kind == "signal":
        return await _panel(request, workflow_id, run_id, tab=kind, notice=f"Signal {name} sent.")
    verb = "Query" if kind == "query" else "Update"
    return await _panel(
        request,
        workflow_id,
        run_id,
        tab=kind,
        values=values,
        notice=f"{verb} {name} answered.",
        result=outcome,
    )


@require_POST
@login_required
async def run_signal(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    return await _handler_action(request, workflow_id, run_id, "signal")


@require_POST
@login_required
async def run_query(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    return await _handler_action(request, workflow_id, run_id, "query")


@require_POST
@login_required
async def run_update(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    return await _handler_action(request, workflow_id, run_id, "update")


def _to_run(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    url = reverse("dash-run", args=[workflow_id, run_id])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@require_POST
@login_required
async def run_reset(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    user = await _operator_or_403(request, "reset", workflow_id, run_id)
    values = {"reset_point": request.POST.get("event_id", ""), "reset_reason": ""}
    values["reset_reason"] = request.POST.get("reason", "")
    payload: dict[str, Any] = {"event_id": values["reset_point"], "reason": values["reset_reason"]}
    act = _Action(request, user, "reset", workflow_id, run_id, payload)
    try:
        events = await _history_or_none(workflow_id, run_id)
        if events is None:
            raise actions.InvalidAction("Temporal has no history for this run")
        event_id = actions.check_reset_point(values["reset_point"], actions.reset_points(events))
        reason = actions.check_reason(values["reset_reason"])
    except actions.InvalidAction as exc:
        return await act.failed(str(exc), tab="retry", values=values, errors={"reset": str(exc)})
    except temporal.TemporalUnavailable as exc:
        return await act.failed(str(exc), tab="retry", values=values, error=str(exc))
    payload.update({"event_id": event_id, "reason": reason})
    username = user.get_username()
    try:
        new_run_id = await temporal.reset_run(
            temporal.identity_for(username),
            workflow_id,
            run_id,
            event_id,
            actions.attributed(reason, username),
        )
    except (temporal.ActionFailed, temporal.TemporalUnavailable) as exc:
        return await act.failed(str(exc), tab="retry", values=values, error=f"Reset: {exc}")
    await act.done(f"reset to event {event_id}", new_workflow_id=workflow_id, new_run_id=new_run_id)
    return _to_run(request, workflow_id, new_run_id)


def _again_ctx(
    workflow_id: str, run_id: str, started: actions.StartedWith | None, **extra: Any
) -> dict[str, Any]:
    decoded = (
        [run_page.decode_payload(run_page.to_json(p)) for p in started.payloads] if started else []
    )
    shown = decoded[0] if len(decoded) == 1 else decoded
    return {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "started": started,
        "editable": started is not None and started.workflow_type in BUNDLED,
        "input": run_page.pretty(shown) if started else "",
        "task_queue": started.task_queue if started else "",
        "error": "",
        **extra,
    }


async def _run_again_editor(
    request: HtmxHttpRequest, workflow_id: str, run_id: str
) -> HttpResponse:
    """The input of the run, to edit before it runs again (bundled workflows)."""
    user = await request.auser()
    try:
        started = actions.started_with(await _history_or_none(workflow_id, run_id) or [])
        error = "" if started else "Temporal has no start event for this run to copy."
    except temporal.TemporalUnavailable as exc:
        started, error = None, str(exc)
    ctx = _again_ctx(
        workflow_id, run_id, started, error=error, can_operate=await user.ahas_perm(OPERATE_RUNS)
    )
    return render(request, "dashboard/run_again.html", ctx)


@require_http_methods(["GET", "POST"])
@login_required
async def run_again(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    """A new run of the same type on the same task queue: the same raw input payloads, or,
    for a bundled workflow, the input as edited on the GET page."""
    if request.method == "GET":
        return await _run_again_editor(request, workflow_id, run_id)
    user = await _operator_or_403(request, "run_again", workflow_id, run_id)
    act = _Action(request, user, "run_again", workflow_id, run_id)
    raw_input = request.POST.get("input")
    started: actions.StartedWith | None = None
    try:
        events = await _history_or_none(workflow_id, run_id)
        started = actions.started_with(events or [])
        if started is None:
            raise temporal.ActionFailed("Temporal has no start event for this run to copy")
        new_workflow_id = actions.again_id(workflow_id, uuid.uuid4().hex[:6])
        task_queue = request.POST.get("task_queue", "").strip() or started.task_queue
        payload: dict[str, Any] = {
            "workflow_type": started.workflow_type,
            "task_queue": task_queue,
            "new_workflow_id": new_workflow_id,
        }
        args: list[Any] = [RawValue(p) for p in started.payloads]
        act.payload = payload
        if raw_input is not None:
            payload.update(edited=True, input=raw_input[:4000])
            edited = actions.edited_input(started.workflow_type, raw_input)
            payload["input"] = dataclasses.asdict(edited)
            args = [edited]
        new_run_id = await temporal.start_run(
            temporal.identity_for(user.get_username()),
            started.workflow_type,
            args,
            new_workflow_id,
            task_queue,
        )
    except actions.InvalidAction as exc:
        await _audit(
            user, "run_again", workflow_id, run_id, act.payload, AuditEntry.Outcome.ERROR, str(exc)
        )
        ctx = _again_ctx(
            workflow_id, run_id, started, can_operate=True, error=str(exc),
            input=raw_input or "", task_queue=request.POST.get("task_queue", ""),
        )  # fmt: skip
        return render(request, "dashboard/run_again.html", ctx, status=400)
    except (temporal.ActionFailed, temporal.TemporalUnavailable) as exc:
        if raw_input is not None:
            await _audit(
                user,
                "run_again",
                workflow_id,
                run_id,
                act.payload,
                AuditEntry.Outcome.ERROR,
                str(exc),
            )
            ctx = _again_ctx(
                workflow_id, run_id, started, can_operate=True, error=f"Run again: {exc}",
                input=raw_input, task_queue=request.POST.get("task_queue", ""),
            )  # fmt: skip
            return render(request, "dashboard/run_again.html", ctx, status=502)
        return await act.failed(str(exc), tab="retry", error=f"Run again: {exc}")
    act.payload = payload
    await act.done(
        f"started {new_workflow_id}", new_workflow_id=new_workflow_id, new_run_id=new_run_id
    )
    return _to_run(request, new_workflow_id, new_run_id)


async def _stop(
    request: HtmxHttpRequest, workflow_id: str, run_id: str, action: str
) -> HttpResponse:
    user = await _operator_or_403(request, action, workflow_id, run_id)
    raw = request.POST.get("reason", "")
    values = {f"{action}_reason": raw}
    act = _Action(request, user, action, workflow_id, run_id, {"reason": raw})
    try:
        reason = actions.check_reason(raw)
    except actions.InvalidAction as exc:
        return await act.failed(str(exc), tab="stop", values=values, errors={action: str(exc)})
    act.payload = {"reason": reason}
    username = user.get_username()
    identity = temporal.identity_for(username)
    try:
        if action == "cancel":
            await temporal.cancel_run(
                identity, workflow_id, run_id, actions.attributed(reason, username)
            )
        else:
            await temporal.terminate_run(
                identity, workflow_id, run_id, actions.attributed(reason, username)
            )
    except (temporal.ActionFailed, temporal.TemporalUnavailable) as exc:
        return await act.failed(str(exc), tab="stop", values=values, error=f"{action}: {exc}")
    await act.done()
    notice = (
        "Cancellation requested; the workflow decides how to wind down."
        if action == "cancel"
        else "Run terminated."
    )
    return await _panel(request, workflow_id, run_id, tab="stop", notice=notice)


@require_POST
@login_required
async def run_cancel(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    return await _stop(request, workflow_id, run_id, "cancel")


@require_POST
@login_required
async def run_terminate(request: HtmxHttpRequest, workflow_id: str, run_id: str) -> HttpResponse:
    return await _stop(request, workflow_id, run_id, "terminate")


# -- start a run --------------------------------------------------------------

BUNDLED = {
    "triage": "Triage: a triage agent hands off to a specialist",
    "approval": "Approval: an agent drafts, a human approves or rejects by signal",
    "resilient": "Resilient: the primary model fails, a fallback answers",
    "parallel": "Parallel: analysts in parallel, an editor merges",
    "conversation": "Conversation: a long-lived chat driven by signals and updates",
    "orchestrator": "Orchestrator: specialists as child workflows, an agent as a tool",
}


# Bundled workflows whose messages come by signal: the one signal-with-start sends.
START_SIGNALS = {"conversation": "user_message"}


class StartRunForm(forms.Form):
    workflow = forms.ChoiceField(choices=list(BUNDLED.items()), widget=forms.RadioSelect)
    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False)
    faults = forms.CharField(
        required=False,
        help_text="Fault specs, one per line or comma-separated, e.g. call=2:fail=2",
    )
    task_queue = forms.CharField(max_length=200)
    workflow_id = forms.CharField(max_length=200, required=False)
    # Signal-with-start: the prompt is the first message, sent by signal; if the
    # workflow id has an open run, that run gets it and no run is started.
    signal_with_start = forms.BooleanField(required=False)

    def clean_faults(self) -> list[str]:
        raw = self.cleaned_data.get("faults", "")
        specs = [s.strip() for s in raw.replace("\n", ",").split(",") if s.strip()]
        try:
            parse_faults(specs)
        except FaultSpecError as exc:
            raise forms.ValidationError(str(exc)) from None
        return specs

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        workflow = data.get("workflow")
        if data.get("signal_with_start"):
            if workflow not in START_SIGNALS:
                self.add_error(
                    "signal_with_start",
                    "only the conversation workflow takes its messages by signal",
                )
            elif not data.get("prompt", "").strip():
                self.add_error("prompt", "the first message is the signal's argument: write it")
        elif workflow != "conversation" and not data.get("prompt", "").strip():
            self.add_error("prompt", "give the agent something to do")
        return data

    @property
    def start_signal(self) -> str | None:
        """The signal that carries the prompt, when the run is signalled-with-start."""
        data = self.cleaned_data
        return START_SIGNALS.get(data["workflow"]) if data.get("signal_with_start") else None

    def workflow_input(self) -> Any:
        data = self.cleaned_data
        faults: list[str] | None = data["faults"] or None
        # Signalled-with-start, the prompt arrives as the signal, not in the input.
        prompt = "" if self.start_signal else data["prompt"]
        return input_for(data["workflow"], prompt, faults)


@require_http_methods(["GET", "POST"])
@login_required
async def new_run(request: HtmxHttpRequest) -> HttpResponse:
    user = await request.auser()
    can_operate = await user.ahas_perm(OPERATE_RUNS)
    if request.method == "GET":
        # The worker's own variable: the form offers the queue the bundled worker polls.
        form = StartRunForm(
            initial={
                "workflow": request.GET.get("workflow", "triage"),
                "task_queue": settings.LOOMVIEW_TASK_QUEUE,
            }
        )
        return render(request, "dashboard/run_new.html", {"form": form, "can_operate": can_operate})
    operator = await _operator_or_403(request, "start")
    form = StartRunForm(request.POST)
    ctx: dict[str, Any] = {"form": form, "can_operate": True, "error": ""}
    if not form.is_valid():
        payload = {k: str(v) for k, v in request.POST.items() if k != "csrfmiddlewaretoken"}
        await _audit(
            operator, "start", "", "", payload, AuditEntry.Outcome.ERROR, form.errors.as_text()
        )
        return render(request, "dashboard/run_new.html", ctx, status=400)
    data = form.cleaned_data
    workflow_id = data["workflow_id"].strip() or f"{data['workflow']}-{uuid.uuid4().hex[:8]}"
    payload = {
        "workflow_type": data["workflow"],
        "prompt": data["prompt"],
        "faults": data["faults"],
        "task_queue": data["task_queue"],
    }
    identity = temporal.identity_for(operator.get_username())
    signal = form.start_signal
    started = True
    try:
        if signal:
            payload["signal_with_start"] = signal
            run_id, started = await temporal.signal_with_start(
                identity, data["workflow"], [form.workflow_input()], workflow_id,
                data["task_queue"], signal, [data["prompt"]],
            )  # fmt: skip
        else:
            run_id = await temporal.start_run(
                identity, data["workflow"], [form.workflow_input()], workflow_id,
                data["task_queue"],
            )  # fmt: skip
    except (temporal.ActionFailed, temporal.TemporalUnavailable) as exc:
        await _audit(
            operator, "start", workflow_id, "", payload, AuditEntry.Outcome.ERROR, str(exc)
        )
        ctx["error"] = f"The run was not started: {exc}"
        return render(request, "dashboard/run_new.html", ctx, status=502)
    if not signal:
        detail = f"started {workflow_id}"
    elif started:
        detail = f"started {workflow_id} with signal {signal}"
    else:
        detail = f"signal {signal} sent to the open run of {workflow_id} (signal-with-start)"
    await _audit(
        operator,
        "start",
        workflow_id,
        run_id,
        payload,
        AuditEntry.Outcome.OK,
        detail,
        new_workflow_id=workflow_id if started else "",
        new_run_id=run_id if started else "",
    )
    return redirect(reverse("dash-run", args=[workflow_id, run_id]))


# -- the audit log ------------------------------------------------------------

ACTIONS = [
    "signal",
    "query",
    "update",
    "reset",
    "run_again",
    "cancel",
    "terminate",
    "start",
    "replay",
    "export",
    "token_create",
    "token_revoke",
]


@require_GET
@login_required
def audit(request: HtmxHttpRequest) -> HttpResponse:
    filters = {
        "user": request.GET.get("user", "").strip(),
        "run": request.GET.get("run", "").strip(),
        "action": request.GET.get("action", "").strip(),
        "outcome": request.GET.get("outcome", "").strip(),
    }
    entries = AuditEntry.objects.all()
    if filters["user"]:
        entries = entries.filter(username=filters["user"])
    if filters["run"]:
        run = filters["run"]
        entries = entries.filter(Q(workflow_id=run) | Q(run_id=run))
    if filters["action"]:
        entries = entries.filter(action=filters["action"])
    if filters["outcome"]:
        entries = entries.filter(outcome=filters["outcome"])
    page = Paginator(entries, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    query = urlencode({k: v for k, v in filters.items() if v})
    ctx = {
        "page": page,
        "filters": filters,
        "actions": ACTIONS,
        "outcomes": AuditEntry.Outcome.choices,
        "query": query,
    }
    if request.htmx:
        return render(request, "dashboard/audit.html#audit-rows", ctx)
    return render(request, "dashboard/audit.html", ctx)

"""Acting on runs from the UI, against a real Temporal dev server and the bundled worker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowExecutionStatus

from dashboard import temporal
from dashboard.models import AuditEntry
from tests.conftest import (
    InProcessWorker,
    InProcessWorkerFactory,
    TemporalServer,
    connect_client,
)
from worker.inputs import AgentRunInput, ApprovalInput, ConversationInput

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(120)]
T = TypeVar("T")
HTMX = {"HX-Request": "true"}


def run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(make())


@pytest.fixture
def on_temporal(temporal_server: TemporalServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    cache.clear()
    return temporal_server.address


@pytest.fixture
def worker(shared_worker: InProcessWorker, on_temporal: str) -> InProcessWorker:
    return shared_worker


@pytest.fixture
def operator(db: None) -> User:
    user = User.objects.create_user("ops", password="x")
    call_command("set_role", "ops", "operator")
    return user


@pytest.fixture
def viewer(db: None) -> User:
    user = User.objects.create_user("vera", password="x")
    call_command("set_role", "vera", "viewer")
    return user


@pytest.fixture
def ops(client: Client, operator: User) -> Client:
    client.force_login(operator)
    return client


@pytest.fixture
def vera(viewer: User) -> Client:
    browser = Client()
    browser.force_login(viewer)
    return browser


def start(
    address: str, workflow: str, arg: Any, task_queue: str, prefix: str = "act"
) -> tuple[str, str]:
    workflow_id = f"{prefix}-{workflow}-{uuid.uuid4().hex[:8]}"

    async def go() -> str:
        client = await connect_client(address)
        handle = await client.start_workflow(workflow, arg, id=workflow_id, task_queue=task_queue)
        return str(handle.first_execution_run_id)

    return workflow_id, run(go)


def history(address: str, workflow_id: str, run_id: str) -> list[HistoryEvent]:
    async def go() -> list[HistoryEvent]:
        client = await connect_client(address)
        fetched = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        return list(fetched.events)

    return run(go)


def status(address: str, workflow_id: str, run_id: str) -> WorkflowExecutionStatus | None:
    async def go() -> WorkflowExecutionStatus | None:
        client = await connect_client(address)
        return (await client.get_workflow_handle(workflow_id, run_id=run_id).describe()).status

    return run(go)


def wait_status(
    address: str, workflow_id: str, run_id: str, wanted: WorkflowExecutionStatus
) -> None:
    deadline = time.monotonic() + 30
    while status(address, workflow_id, run_id) != wanted:
        assert time.monotonic() < deadline, f"{workflow_id} never became {wanted.name}"
        time.sleep(0.2)


def wait_for_event(
    address: str, workflow_id: str, run_id: str, event_type: EventType.ValueType
) -> list[HistoryEvent]:
    deadline = time.monotonic() + 30
    while True:
        events = history(address, workflow_id, run_id)
        if any(e.event_type == event_type for e in events):
            return events
        assert time.monotonic() < deadline, f"no {EventType.Name(event_type)} in {workflow_id}"
        time.sleep(0.2)


def waiting_approval(address: str, worker: InProcessWorker) -> tuple[str, str]:
    """An approval run whose draft is done: it waits for approve/reject."""
    workflow_id, run_id = start(
        address,
        "approval",
        ApprovalInput("Rotate the keys.", timeout_seconds=300),
        worker.task_queue,
    )
    wait_for_event(address, workflow_id, run_id, EventType.EVENT_TYPE_TIMER_STARTED)
    return workflow_id, run_id


def url(workflow_id: str, run_id: str, action: str) -> str:
    return f"/runs/{workflow_id}/{run_id}/{action}/"


def entries(**filters: Any) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(**filters).order_by("id"))


ACTION_POSTS: dict[str, dict[str, str]] = {
    "signal": {"name": "approve", "payload": '{"comment": "sneaky", "by": "vera"}'},
    "query": {"name": "status"},
    "update": {"name": "send_message", "payload": '"hi"'},
    "reset": {"event_id": "4", "reason": "try again"},
    "again": {},
    "cancel": {"reason": "stop"},
    "terminate": {"reason": "stop"},
}


# -- roles --------------------------------------------------------------------


def test_migration_creates_the_roles(db: None) -> None:
    operate = Permission.objects.get(codename="operate_runs", content_type__app_label="dashboard")
    assert list(Group.objects.get(name="Operators").permissions.all()) == [operate]
    assert not Group.objects.get(name="Viewers").permissions.exists()


def test_set_role_moves_a_user_between_roles(operator: User) -> None:
    assert operator.has_perm("dashboard.operate_runs")
    call_command("set_role", "ops", "viewer")
    again = User.objects.get(pk=operator.pk)  # permissions are cached per instance
    assert [g.name for g in again.groups.all()] == ["Viewers"]
    assert not again.has_perm("dashboard.operate_runs")
    with pytest.raises(Exception, match="no user named"):
        call_command("set_role", "nobody", "viewer")


def test_anonymous_users_are_sent_to_log_in(client: Client) -> None:
    for action, data in ACTION_POSTS.items():
        response = client.post(url("wf", "run", action), data)
        assert response.status_code == 302, action
        assert response["Location"].startswith("/login/?next="), action
    assert client.post("/runs/new/", {"workflow": "triage"}).status_code == 302
    assert client.get("/audit/").status_code == 302
    assert not AuditEntry.objects.exists()


def test_actions_need_a_csrf_token(operator: User) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(operator)
    response = browser.post(url("wf", "run", "cancel"), {"reason": "no token"})
    assert response.status_code == 403
    assert not AuditEntry.objects.exists()


def test_actions_are_post_only(ops: Client) -> None:
    assert ops.get(url("wf", "run", "terminate")).status_code == 405


def test_viewer_is_refused_and_nothing_reaches_temporal(
    vera: Client, worker: InProcessWorker, on_temporal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflow_id, run_id = waiting_approval(on_temporal, worker)
    before = len(history(on_temporal, workflow_id, run_id))

    async def no_client(identity: str) -> Any:
        raise AssertionError("a viewer's action reached Temporal")

    monkeypatch.setattr(temporal, "get_client_as", no_client)
    for action, data in ACTION_POSTS.items():
        assert vera.post(url(workflow_id, run_id, action), data).status_code == 403, action
    response = vera.post(
        "/runs/new/", {"workflow": "triage", "prompt": "hi", "task_queue": worker.task_queue}
    )
    assert response.status_code == 403
    events = history(on_temporal, workflow_id, run_id)
    assert len(events) == before
    assert status(on_temporal, workflow_id, run_id) == WorkflowExecutionStatus.RUNNING
    denied = entries(username="vera")
    assert [e.action for e in denied] == [
        "signal", "query", "update", "reset", "run_again", "cancel", "terminate", "start"
    ]  # fmt: skip
    assert {e.outcome for e in denied} == {"denied"}
    # The card tells a viewer why there are no forms.
    panel = vera.get(url(workflow_id, run_id, "actions"), headers=HTMX).content.decode()
    assert "Viewer" in panel and "operator" in panel
    assert 'name="payload"' not in panel and 'name="reason"' not in panel


# -- signal, query, update ----------------------------------------------------


def test_operator_approves_by_signal_with_identity_and_audit(
    ops: Client, worker: InProcessWorker, on_temporal: str
) -> None:
    workflow_id, run_id = waiting_approval(on_temporal, worker)
    panel = ops.get(url(workflow_id, run_id, "actions"), headers=HTMX).content.decode()
    # The signal form lists what the workflow declares, with an example payload.
    assert '<option value="approve"' in panel and '<option value="reject"' in panel
    assert "&quot;by&quot;: &quot;ops&quot;" in panel

    payload = json.dumps({"comment": "ship it", "by": "Ops Olga"})
    response = ops.post(
        url(workflow_id, run_id, "signal"), {"name": "approve", "payload": payload}, headers=HTMX
    )
    assert response.status_code == 200
    assert "Signal approve sent." in response.content.decode()
    wait_status(on_temporal, workflow_id, run_id, WorkflowExecutionStatus.COMPLETED)
    events = history(on_temporal, workflow_id, run_id)
    signaled = [
        e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]
    assert len(signaled) == 1
    attrs = signaled[0].workflow_execution_signaled_event_attributes
    assert attrs.signal_name == "approve"
    assert attrs.identity == "loomview:ops"
    assert json.loads(attrs.input.payloads[0].data) == {"comment": "ship it", "by": "Ops Olga"}
    (entry,) = entries(action="signal")
    assert (entry.username, entry.outcome, entry.workflow_id, entry.run_id) == (
        "ops", "ok", workflow_id, run_id
    )  # fmt: skip
    assert entry.payload == {"name": "approve", "payload": {"comment": "ship it", "by": "Ops Olga"}}


def test_bad_json_and_unknown_signals_are_refused_before_temporal(
    ops: Client, worker: InProcessWorker, on_temporal: str
) -> None:
    workflow_id, run_id = waiting_approval(on_temporal, worker)
    before = len(history(on_temporal, workflow_id, run_id))
    response = ops.post(
        url(workflow_id, run_id, "signal"),
        {"name": "approve", "payload": "{comment: 1"},
        headers=HTMX,
    )
    body = response.content.decode()
    assert response.status_code == 200  # htmx swaps 2xx only; the error is in the form
    assert "the payload is not valid JSON" in body
    assert "{comment: 1" in body  # what the user typed is kept
    response = ops.post(url(workflow_id, run_id, "signal"), {"name": "aprove", "payload": "{}"})
    assert response.status_code == 400
    assert "this workflow has no signal &#x27;aprove&#x27;" in response.content.decode()
    assert "approve, reject" in response.content.decode()
    assert len(history(on_temporal, workflow_id, run_id)) == before
    assert [(e.outcome, e.action) for e in entries()] == [("error", "signal")] * 2
    assert "not valid JSON" in entries()[0].message


def test_query_shows_the_result(ops: Client, worker: InProcessWorker, on_temporal: str) -> None:
    workflow_id, run_id = waiting_approval(on_temporal, worker)
    panel = ops.get(url(workflow_id, run_id, "actions"), headers=HTMX).content.decode()
    assert '<option value="status"' in panel
    response = ops.post(url(workflow_id, run_id, "query"), {"name": "status"}, headers=HTMX)
    body = response.content.decode()
    assert "Query status answered." in body
    assert "&quot;state&quot;: &quot;waiting&quot;" in body
    # A query only looks: the audit log is for actions that change a run.
    assert entries(action="query") == []
    response = ops.post(url(workflow_id, run_id, "query"), {"name": "no_such"}, headers=HTMX)
    assert "this workflow has no query" in response.content.decode()
    assert not AuditEntry.objects.exists()


def test_what_an_open_approval_waits_for(
    ops: Client, worker: InProcessWorker, on_temporal: str
) -> None:
    workflow_id, run_id = waiting_approval(on_temporal, worker)
    page = ops.get(f"/runs/{workflow_id}/{run_id}/").content.decode()
    card = page[page.index('id="run-waiting"') : page.index('id="run-export"')]
    assert "What it waits for" in card
    assert 'data-wait="message"' in card  # the approval waits for a signal
    assert 'data-wait="timer"' in card and "5m 00s: fires" in card  # with its timeout
    assert "/handlers/" in card
    handlers = ops.get(url(workflow_id, run_id, "handlers"), headers=HTMX).content.decode()
    assert handlers.index('data-handler="signal:approve"') < handlers.index(
        'data-handler="signal:reject"'
    )
    assert "handler-destructive" in handlers.split('data-handler="signal:reject"')[0][-200:]
    # A handler link opens the Actions card with that handler chosen.
    panel = ops.get(
        url(workflow_id, run_id, "actions"), {"tab": "signal", "name": "reject"}, headers=HTMX
    ).content.decode()
    assert '<option value="reject" data-example="' in panel
    assert 'value="reject" data-example="{&quot;comment&quot;: &quot;Not now&quot;' in panel
    assert '<option value="reject"' in panel.split(" selected>")[0]
    assert "&quot;Not now&quot;" in panel.split("</textarea>")[0].split("<textarea")[-1]
    # Nothing here asked the workflow a query that lands in the audit log.
    assert not AuditEntry.objects.exists()
    # Closed, the card is gone.
    ops.post(url(workflow_id, run_id, "signal"), {"name": "approve", "payload": "{}"})
    wait_status(on_temporal, workflow_id, run_id, WorkflowExecutionStatus.COMPLETED)
    page = ops.get(f"/runs/{workflow_id}/{run_id}/").content.decode()
    assert "What it waits for" not in page


def test_the_default_signal_is_never_a_destructive_one(
    ops: Client, worker: InProcessWorker, on_temporal: str
) -> None:
    workflow_id, run_id = start(on_temporal, "conversation", ConversationInput(), worker.task_queue)
    wait_for_event(on_temporal, workflow_id, run_id, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    panel = ops.get(url(workflow_id, run_id, "actions"), headers=HTMX).content.decode()
    signal_form = panel.split('data-pane="signal"')[1].split('data-pane="query"')[0]
    options = signal_form.split("<option")[1:]
    # Declared as end and user_message (alphabetical): user_message comes first, chosen.
    assert [o.split('value="')[1].split('"')[0] for o in options] == ["user_message", "end"]
    assert " selected>" in options[0] and " selected>" not in options[1]


def test_update_returns_its_result_or_the_validators_error(
    ops: Client, worker: InProcessWorker, on_temporal: str
) -> None:
    workflow_id, run_id = start(on_temporal, "conversation", ConversationInput(), worker.task_queue)
    response = ops.post(
        url(workflow_id, run_id, "update"),
        {"name": "send_message", "payload": '"Where is my refund?"'},
        headers=HTMX,
    )
    body = response.content.decode()
    assert "Update send_message answered." in body, body
    assert "data-action-result" in body
    events = history(on_temporal, workflow_id, run_id)
    accepted = [
        e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    assert len(accepted) == 1
    assert (
        accepted[
            0
        ].workflow_execution_update_accepted_event_attributes.accepted_request.meta.identity
        == "loomview:ops"
    )

    response = ops.post(
        url(workflow_id, run_id, "update"),
        {"name": "send_message", "payload": '"  "'},
        headers=HTMX,
    )
    assert "the workflow rejected the update: the message is empty" in response.content.decode()
    assert [e.outcome for e in entries(action="update")] == ["ok", "error"]
    ops.post(url(workflow_id, run_id, "signal"), {"name": "end"})
    wait_status(on_temporal, workflow_id, run_id, WorkflowExecutionStatus.COMPLETED)


# -- cancel, terminate, closed runs, Temporal down ----------------------------


def test_cancel_and_terminate_need_a_reason_and_name_the_user(
    ops: Client, worker: InProcessWorker, on_temporal: str
) -> None:
    cancel_id, cancel_run = waiting_approval(on_temporal, worker)
    response = ops.post(url(cancel_id, cancel_run, "cancel"), {"reason": "  "}, headers=HTMX)
    assert "a reason is required" in response.content.decode()
    assert status(on_temporal, cancel_id, cancel_run) == WorkflowExecutionStatus.RUNNING

    response = ops.post(
        url(cancel_id, cancel_run, "cancel"), {"reason": "wrong ticket"}, headers=HTMX
    )
    assert "Cancellation requested" in response.content.decode()
    wait_status(on_temporal, cancel_id, cancel_run, WorkflowExecutionStatus.CANCELED)
    events = history(on_temporal, cancel_id, cancel_run)
    (requested,) = [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
    ]
    attrs = requested.workflow_execution_cancel_requested_event_attributes
    assert attrs.identity == "loomview:ops"
    assert attrs.cause == "wrong ticket (by ops via Loomview)"

    term_id, term_run = waiting_approval(on_temporal, worker)
    response = ops.post(url(term_id, term_run, "terminate"), {"reason": "runaway"}, headers=HTMX)
    assert "Run terminated." in response.content.decode()
    assert status(on_temporal, term_id, term_run) == WorkflowExecutionStatus.TERMINATED
    terminated = history(on_temporal, term_id, term_run)[-1]
    attrs2 = terminated.workflow_execution_terminated_event_attributes
    assert (attrs2.reason, attrs2.identity) == ("runaway (by ops via Loomview)", "loomview:ops")
    assert [(e.action, e.outcome) for e in entries()] == [
        ("cancel", "error"), ("cancel", "ok"), ("terminate", "ok")
    ]  # fmt: skip

    # Acting on the closed run: a clear message, an audit entry, nothing else.
    response = ops.post(
        url(term_id, term_run, "signal"), {"name": "approve", "payload": "{}"}, headers=HTMX
    )
    body = response.content.decode()
    assert "data-action-error" in body
    assert "not open" in body
    response = ops.post(url(term_id, term_run, "terminate"), {"reason": "again"}, headers=HTMX)
    assert "not open" in response.content.decode()
    assert [e.outcome for e in entries()][-2:] == ["error", "error"]
    # A closed run offers no signal or stop forms.
    panel = ops.get(url(term_id, term_run, "actions"), headers=HTMX).content.decode()
    assert 'data-pane="signal"' not in panel and 'data-pane="stop"' not in panel
    assert 'data-pane="retry"' in panel


def test_temporal_unreachable_is_a_banner_and_an_audit_entry(
    ops: Client, closed_temporal_address: str
) -> None:
    response = ops.post(url("wf", "run", "terminate"), {"reason": "down?"}, headers=HTMX)
    body = response.content.decode()
    assert response.status_code == 200
    assert f"Temporal is unreachable at {closed_temporal_address}" in body
    (entry,) = entries()
    assert (entry.action, entry.outcome) == ("terminate", "error")
    assert "unreachable" in entry.message


# -- reset and run again -------------------------------------------------------


def failed_triage(address: str, worker: InProcessWorker) -> tuple[str, str]:
    workflow_id, run_id = start(
        address,
        "triage",
        AgentRunInput("My dashboard sync is stuck", faults=["call=2:fatal"]),
        worker.task_queue,
    )
    wait_status(address, workflow_id, run_id, WorkflowExecutionStatus.FAILED)
    return workflow_id, run_id


def scheduled_call(events: list[HistoryEvent], activity_id: str) -> HistoryEvent:
    return next(
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_id == activity_id
    )


def test_reset_to_before_a_model_call_links_both_runs(
    ops: Client, worker: InProcessWorker, on_temporal: str
) -> None:
    workflow_id, run_id = failed_triage(on_temporal, worker)
    events = history(on_temporal, workflow_id, run_id)
    point = scheduled_call(events, "2").activity_task_scheduled_event_attributes
    finish = point.workflow_task_completed_event_id
    panel = ops.get(url(workflow_id, run_id, "actions"), headers=HTMX).content.decode()
    assert f'<option value="{finish}"' in panel
    assert "Before model call 2" in panel and "Last good point before the failure" in panel

    # A point that is not a workflow task of this run is refused before Temporal.
    response = ops.post(
        url(workflow_id, run_id, "reset"), {"event_id": "99999", "reason": "x"}, headers=HTMX
    )
    assert "event 99999 is not a reset point of this run" in response.content.decode()
    response = ops.post(
        url(workflow_id, run_id, "reset"), {"event_id": str(finish), "reason": ""}, headers=HTMX
    )
    assert "a reason is required" in response.content.decode()

    response = ops.post(
        url(workflow_id, run_id, "reset"),
        {"event_id": str(finish), "reason": "model outage is over"},
        headers=HTMX,
    )
    assert response.status_code == 200
    new_url = response["HX-Redirect"]
    new_run_id = new_url.rstrip("/").split("/")[-1]
    assert new_url == f"/runs/{workflow_id}/{new_run_id}/" and new_run_id != run_id
    reset_events = history(on_temporal, workflow_id, new_run_id)
    (reset_task,) = [
        e
        for e in reset_events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        and e.workflow_task_failed_event_attributes.cause
        == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW
    ]
    attrs = reset_task.workflow_task_failed_event_attributes
    assert attrs.base_run_id == run_id
    assert attrs.failure.message == "model outage is over (by ops via Loomview)"
    # Model call 1 is kept, model call 2 runs again in the new run (and, with the
    # same fatal fault in its input, fails again).
    wait_status(on_temporal, workflow_id, new_run_id, WorkflowExecutionStatus.FAILED)
    reset_events = history(on_temporal, workflow_id, new_run_id)
    assert (
        len(
            [
                e
                for e in reset_events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            ]
        )
        >= 2
    )

    outcomes = [(e.action, e.outcome) for e in entries()]
    assert outcomes == [("reset", "error"), ("reset", "error"), ("reset", "ok")]
    done = entries(outcome="ok")[0]
    assert (done.new_workflow_id, done.new_run_id) == (workflow_id, new_run_id)
    assert done.payload == {"event_id": finish, "reason": "model outage is over"}

    new_panel = ops.get(url(workflow_id, new_run_id, "actions"), headers=HTMX).content.decode()
    assert "Reset from" in new_panel and f"/runs/{workflow_id}/{run_id}/" in new_panel
    old_panel = ops.get(url(workflow_id, run_id, "actions"), headers=HTMX).content.decode()
    assert "Reset to" in old_panel and f"/runs/{workflow_id}/{new_run_id}/" in old_panel


def test_run_again_starts_the_same_input_as_a_new_run(
    ops: Client, worker: InProcessWorker, on_temporal: str
) -> None:
    workflow_id, run_id = failed_triage(on_temporal, worker)
    response = ops.post(url(workflow_id, run_id, "again"))
    assert response.status_code == 302
    _, new_workflow_id, new_run_id, _ = response["Location"].split("/")[1:]
    assert new_workflow_id.startswith(f"{workflow_id}-again-")
    old = history(on_temporal, workflow_id, run_id)[0].workflow_execution_started_event_attributes
    new = history(on_temporal, new_workflow_id, new_run_id)[0]
    started = new.workflow_execution_started_event_attributes
    assert started.workflow_type.name == "triage"
    assert started.task_queue.name == worker.task_queue
    assert started.input == old.input
    assert started.identity == "loomview:ops"
    page = ops.get(f"/runs/{new_workflow_id}/{new_run_id}/actions/", headers=HTMX).content.decode()
    assert "Run again of" in page and f"/runs/{workflow_id}/{run_id}/" in page
    old_page = ops.get(url(workflow_id, run_id, "actions"), headers=HTMX).content.decode()
    assert "Run again as" in old_page


def test_reset_points_come_from_the_history(worker: InProcessWorker, on_temporal: str) -> None:
    from dashboard import actions

    workflow_id, run_id = failed_triage(on_temporal, worker)
    events = history(on_temporal, workflow_id, run_id)
    points = actions.reset_points(events)
    calls = [p for p in points if p.kind == "call"]
    assert [p.label.split(" (")[0] for p in calls] == ["Before model call 1", "Before model call 2"]
    (last_good,) = [p for p in points if p.kind == "last-good"]
    failed = next(e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
    completed = [
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        and e.event_id < failed.event_id
    ]
    assert last_good.event_id == completed[-1]


# -- start a run, right now, the audit log ------------------------------------


def test_start_a_run_validates_faults_and_lands_on_the_run(
    ops: Client, worker: InProcessWorker, on_temporal: str
) -> None:
    page = ops.get("/runs/new/").content.decode()
    assert 'value="approval"' in page and 'name="faults"' in page
    form = {"workflow": "triage", "prompt": "Reset my password", "task_queue": worker.task_queue}
    response = ops.post("/runs/new/", {**form, "faults": "call=2:explode"})
    assert response.status_code == 400
    assert "unknown key &#x27;explode&#x27;" in response.content.decode()
    response = ops.post("/runs/new/", {**form, "prompt": " "})
    assert response.status_code == 400
    assert "give the agent something to do" in response.content.decode()

    response = ops.post("/runs/new/", {**form, "faults": "call=1:fail=1", "workflow_id": ""})
    assert response.status_code == 302
    _, workflow_id, run_id, _ = response["Location"].split("/")[1:]
    assert workflow_id.startswith("triage-")
    wait_status(on_temporal, workflow_id, run_id, WorkflowExecutionStatus.COMPLETED)
    started = history(on_temporal, workflow_id, run_id)[0]
    attrs = started.workflow_execution_started_event_attributes
    assert attrs.identity == "loomview:ops"
    assert json.loads(attrs.input.payloads[0].data) == {
        "prompt": "Reset my password",
        "faults": ["call=1:fail=1"],
    }
    assert [(e.action, e.outcome) for e in entries()] == [
        ("start", "error"), ("start", "error"), ("start", "ok")
    ]  # fmt: skip
    assert entries()[-1].new_run_id == run_id
    # The same workflow id while that run is open is refused with a message.
    workflow_id2, _ = waiting_approval(on_temporal, worker)
    response = ops.post("/runs/new/", {**form, "workflow": "approval", "workflow_id": workflow_id2})
    assert "already open" in response.content.decode()


def test_right_now_shows_pending_activities_and_the_stack_trace(
    ops: Client, inprocess_worker_factory: InProcessWorkerFactory, on_temporal: str
) -> None:
    slow = inprocess_worker_factory()
    workflow_id, run_id = start(
        on_temporal,
        "triage",
        AgentRunInput("Slow one", faults=["call=1:slow=20000"]),
        slow.task_queue,
    )
    deadline = time.monotonic() + 20
    body = ""
    while "invoke_model_activity" not in body and time.monotonic() < deadline:
        body = ops.get(url(workflow_id, run_id, "now"), headers=HTMX).content.decode()
        time.sleep(0.3)
    assert "invoke_model_activity" in body
    assert "data-stack-trace" in body
    assert "query: __stack_trace" not in body  # the task answering the query is left out
    assert 'hx-trigger="every 2s"' in body
    pending = ops.get(url(workflow_id, run_id, "now") + "?part=pending", headers=HTMX)
    assert "invoke_model_activity" in pending.content.decode()
    assert "data-stack-trace" not in pending.content.decode()  # polling asks no query
    ops.post(url(workflow_id, run_id, "terminate"), {"reason": "done looking"})
    pending = ops.get(url(workflow_id, run_id, "now") + "?part=pending", headers=HTMX)
    assert "The run is terminated." in pending.content.decode()
    assert "every 2s" not in pending.content.decode()
    body = ops.get(url(workflow_id, run_id, "now"), headers=HTMX).content.decode()
    assert body.strip() == '<section id="run-now" hidden></section>'


def test_audit_page_filters_and_pages(ops: Client, operator: User) -> None:
    for n in range(30):
        AuditEntry.objects.create(
            user=operator,
            username="ops" if n % 2 else "ada",
            action="signal" if n % 3 else "terminate",
            workflow_id=f"wf-{n}",
            run_id=f"run-{n}",
            outcome="ok",
        )
    body = ops.get("/audit/").content.decode()
    assert "Page 1 of 2" in body and "30 entries" in body
    body = ops.get("/audit/?user=ada&action=terminate").content.decode()
    assert body.count('class="audit-ok"') == 5
    body = ops.get("/audit/?run=run-7", headers=HTMX).content.decode()
    assert body.count('class="audit-ok"') == 1 and "<html" not in body
    assert "Older →" in ops.get("/audit/").content.decode()


def test_audit_entries_cannot_be_changed_in_the_admin(client: Client) -> None:
    admin = User.objects.create_superuser("root", password="x")
    entry = AuditEntry.objects.create(user=admin, username="root", action="cancel", outcome="ok")
    client.force_login(admin)
    assert client.get("/admin/dashboard/auditentry/add/").status_code == 403
    assert client.get(f"/admin/dashboard/auditentry/{entry.pk}/delete/").status_code == 403
    response = client.post(
        f"/admin/dashboard/auditentry/{entry.pk}/change/", {"action": "signal", "outcome": "ok"}
    )
    assert response.status_code == 403
    entry.refresh_from_db()
    assert entry.action == "cancel"

"""Replaying one model call through the worker's model provider, from the dashboard.

Real parts: a Temporal dev server, the bundled worker in process (the demo
model, or the OpenAI provider pointed at an OpenAI-compatible HTTP server this
test runs on loopback), the dashboard's views through Django's test client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client

from dashboard import temporal
from dashboard.models import AuditEntry, Replay
from tests.conftest import (
    InProcessWorker,
    InProcessWorkerFactory,
    TemporalServer,
    connect_client,
    free_port,
    read_invocations,
)
from worker.inputs import AgentRunInput

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(180)]

TECHNICAL = "Our dashboard sync is stuck and the app shows errors since this morning."
BILLING = "I was charged twice on invoice INV-2231, please refund the duplicate payment."


@pytest.fixture
def on_temporal(temporal_server: TemporalServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    cache.clear()
    return temporal_server.address


@pytest.fixture
def ops(client: Client, db: None) -> Client:
    User.objects.create_user("ops", password="x")
    call_command("set_role", "ops", "operator")
    client.force_login(User.objects.get(username="ops"))
    return client


@pytest.fixture
def vera(db: None) -> Client:
    User.objects.create_user("vera", password="x")
    call_command("set_role", "vera", "viewer")
    browser = Client()
    browser.force_login(User.objects.get(username="vera"))
    return browser


def triage_run(address: str, task_queue: str, prompt: str = TECHNICAL) -> tuple[str, str]:
    """A finished triage run (no spans: the in-process worker does not trace)."""

    async def go() -> tuple[str, str]:
        client = await connect_client(address)
        handle = await client.start_workflow(
            "triage",
            AgentRunInput(prompt),
            id=f"replay-src-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        await handle.result()
        return handle.id, str(handle.result_run_id)

    return asyncio.run(go())


def editor_url(workflow_id: str, run_id: str, activity_id: str = "1") -> str:
    return f"/runs/{workflow_id}/{run_id}/calls/{activity_id}/replay/"


def form_values(client: Client, workflow_id: str, run_id: str) -> dict[str, str]:
    """The editor's fields as the page fills them in."""
    response = client.get(editor_url(workflow_id, run_id))
    assert response.status_code == 200
    return dict(response.context["values"])


def finished(client: Client, url: str) -> Replay:
    deadline = time.monotonic() + 60
    while True:
        response = client.get(url)
        assert response.status_code == 200
        replay: Replay = response.context["replay"]
        if not replay.is_pending:
            return replay
        assert time.monotonic() < deadline, "the replay never finished"
        time.sleep(0.3)


def test_replay_through_the_demo_model(
    ops: Client, shared_worker: InProcessWorker, on_temporal: str
) -> None:
    workflow_id, run_id = triage_run(on_temporal, shared_worker.task_queue)
    values = form_values(ops, workflow_id, run_id)
    # The call as it was sent: the triage agent's instructions and the user's message.
    assert values["system"].startswith("You are the Triage agent.")
    assert TECHNICAL in values["input"]
    assert values["task_queue"] == shared_worker.task_queue
    assert "loomview_faults" not in values["settings"]

    edited = [{"content": BILLING, "role": "user"}]
    values.update(input=json.dumps(edited), model="loomview-demo-1")
    response = ops.post(editor_url(workflow_id, run_id), values)
    assert response.status_code == 302, response.content[:1000]
    replay = finished(ops, response["Location"])
    assert replay.status == "completed", replay.error

    # What the demo model received is what the editor sent: it hands the billing
    # question to billing, and its call id is a digest of exactly that input.
    sent = f"{values['system']}\n{json.dumps(edited, default=str)}"
    digest = hashlib.sha256(sent.encode()).hexdigest()[:16]
    assert replay.output == [
        {
            "arguments": "{}",
            "call_id": f"call_{digest}",
            "name": "transfer_to_billing_specialist",
            "type": "function_call",
            "id": f"fc_{digest}",
            "status": "completed",
        }
    ]
    invocations = [
        row
        for row in read_invocations(shared_worker.demo_log)
        if row.get("workflow_id") == replay.replay_workflow_id
    ]
    assert [(row["outcome"], row["input_tokens"]) for row in invocations] == [
        ("ok", replay.tokens_in)
    ]
    # The original answered differently: technical support.
    assert replay.original_output is not None
    assert replay.original_output[0]["name"] == "transfer_to_technical_support"
    assert replay.original_tokens_in and replay.tokens_in and replay.latency_ms is not None

    page = ops.get(f"/replays/{replay.pk}/").content.decode()
    assert "transfer_to_billing_specialist" in page and "transfer_to_technical_support" in page
    assert "<del>" in page and "<ins>" in page  # the output diff, computed on the server
    assert replay.cost is not None and f"${replay.cost:.4f}" in page

    (entry,) = AuditEntry.objects.filter(action="replay")
    assert (entry.username, entry.outcome, entry.workflow_id, entry.run_id) == (
        "ops",
        "ok",
        workflow_id,
        run_id,
    )
    assert entry.payload["edited"] == ["model", "input messages"]
    assert (entry.new_workflow_id, entry.new_run_id) == (
        replay.replay_workflow_id,
        replay.replay_run_id,
    )
    # Listed on the run page's compare card.
    card = ops.get(f"/runs/{workflow_id}/{run_id}/compare/").content.decode()
    assert f"/replays/{replay.pk}/" in card


def test_replays_compare_with_each_other(
    ops: Client, shared_worker: InProcessWorker, on_temporal: str
) -> None:
    workflow_id, run_id = triage_run(on_temporal, shared_worker.task_queue)
    values = form_values(ops, workflow_id, run_id)
    replays = []
    for prompt in (BILLING, TECHNICAL):
        values["input"] = json.dumps([{"role": "user", "content": prompt}])
        response = ops.post(editor_url(workflow_id, run_id), values)
        assert response.status_code == 302
        replays.append(finished(ops, response["Location"]))
    a, b = replays
    response = ops.get(f"/replays/compare/?a={a.pk}&b={b.pk}")
    assert response.status_code == 200
    pairs = response.context["output_pairs"]
    assert [(p.a.tool_calls[0].name, p.b.tool_calls[0].name, p.status) for p in pairs] == [
        ("transfer_to_billing_specialist", "transfer_to_technical_support", "changed")
    ]
    assert [p.status for p in response.context["input_pairs"]] == ["changed"]
    # The run page's card offers the same, from two ticked replays.
    card = ops.get(f"/runs/{workflow_id}/{run_id}/compare/").content.decode()
    assert card.count('name="r"') == 2
    assert ops.get(f"/replays/compare/?r={a.pk}&r={b.pk}").status_code == 200


def test_viewers_cannot_replay_and_bad_edits_never_reach_temporal(
    ops: Client,
    vera: Client,
    shared_worker: InProcessWorker,
    on_temporal: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workflow_id, run_id = triage_run(on_temporal, shared_worker.task_queue)
    values = form_values(ops, workflow_id, run_id)

    async def no_client(identity: str) -> Any:
        raise AssertionError("a refused replay reached Temporal")

    monkeypatch.setattr(temporal, "get_client_as", no_client)
    # A viewer reads the call but cannot run it.
    page = vera.get(editor_url(workflow_id, run_id))
    assert page.status_code == 200
    assert "operator" in page.content.decode() and page.context["can_operate"] is False
    assert vera.post(editor_url(workflow_id, run_id), values).status_code == 403
    (denied,) = AuditEntry.objects.filter(username="vera")
    assert (denied.action, denied.outcome) == ("replay", "denied")
    # No CSRF token, no replay.
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(User.objects.get(username="ops"))
    assert strict.post(editor_url(workflow_id, run_id), values).status_code == 403

    bad = {
        "input": ("[{not json", "not valid JSON"),
        "settings": ('{"extra_headers": {"Authorization": "Bearer x"}}', "cannot be replayed"),
        "model": ("gpt 4o; rm -rf", "a model name is"),
    }
    for name, (value, message) in bad.items():
        response = ops.post(editor_url(workflow_id, run_id), {**values, name: value})
        assert response.status_code == 400, name
        assert list(response.context["errors"]) == [name]
        assert message in response.context["errors"][name]
    settings_typo = {**values, "settings": '{"temprature": 0.5}'}
    response = ops.post(editor_url(workflow_id, run_id), settings_typo)
    assert "not a model setting: temprature" in response.context["errors"]["settings"]
    assert not Replay.objects.exists()
    assert [e.outcome for e in AuditEntry.objects.filter(username="ops")] == ["error"] * 4
    # A call the run does not have is a 404.
    assert ops.get(editor_url(workflow_id, run_id, "99")).status_code == 404


# -- an OpenAI-compatible server ---------------------------------------------------


@dataclass
class FakeOpenAI:
    """An OpenAI-compatible HTTP server on loopback that records what it is sent."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


def _response_body(model: str) -> dict[str, Any]:
    """A Responses API answer, as api.openai.com shapes it."""
    return {
        "id": "resp_fake_1",
        "object": "response",
        "created_at": 1760000000,
        "status": "completed",
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_fake_1",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": "Refund approved: <b>the duplicate</b> charge is reversed.",
                        "annotations": [],
                    }
                ],
            }
        ],
        "usage": {
            "input_tokens": 123,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 45,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 168,
        },
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
    }


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    port = free_port()
    fake = FakeOpenAI(url=f"http://127.0.0.1:{port}/v1")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            fake.requests.append(
                {
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }
            )
            status = 200
            answer: dict[str, Any] = _response_body(str(body.get("model")))
            if body.get("model") == "no-such-model":
                status = 404
                answer = {
                    "error": {
                        "message": "The model does not exist",
                        "type": "invalid_request_error",
                    }
                }
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    thread.join(5)


def test_replay_through_an_openai_compatible_server(
    ops: Client,
    shared_worker: InProcessWorker,
    inprocess_worker_factory: InProcessWorkerFactory,
    fake_openai: FakeOpenAI,
    on_temporal: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "sk-test-" + secrets.token_hex(16)
    # The worker holds the key: it reads it from its environment when it starts.
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url)
    openai_worker = inprocess_worker_factory(provider="openai")
    workflow_id, run_id = triage_run(on_temporal, shared_worker.task_queue, BILLING)

    values = form_values(ops, workflow_id, run_id)
    values.update(
        model="gpt-4o-mini",
        system="You are the Triage agent. Answer the customer directly.",
        settings=json.dumps({"temperature": 0.2, "max_tokens": 300}),
        task_queue=openai_worker.task_queue,
    )
    response = ops.post(editor_url(workflow_id, run_id), values)
    assert response.status_code == 302, response.content[:1000]
    replay = finished(ops, response["Location"])
    assert replay.status == "completed", replay.error

    # The server got the edited call, in the Responses protocol, with the worker's key.
    (request,) = fake_openai.requests
    assert request["path"] == "/v1/responses"
    assert request["headers"]["authorization"] == f"Bearer {key}"
    body = request["body"]
    assert body["model"] == "gpt-4o-mini"
    assert body["instructions"] == "You are the Triage agent. Answer the customer directly."
    assert body["input"] == [{"role": "user", "content": BILLING}]
    assert (body["temperature"], body["max_output_tokens"]) == (0.2, 300)
    # The call's handoffs went with it, as function tools.
    assert {t["name"] for t in body["tools"]} == {
        "transfer_to_billing_specialist",
        "transfer_to_technical_support",
    }

    assert (replay.tokens_in, replay.tokens_out) == (123, 45)
    assert replay.cost == Decimal("0.000045")  # 123 x $0.15/M + 45 x $0.60/M
    page = ops.get(f"/replays/{replay.pk}/").content.decode()
    # Model output is escaped, never markup.
    assert "&lt;b&gt;the duplicate&lt;/b&gt;" in page and "<b>the duplicate</b>" not in page
    # The key never reaches a page, the replay's record or the audit log.
    for text in (
        page,
        ops.get(editor_url(workflow_id, run_id)).content.decode(),
        ops.get(f"/runs/{workflow_id}/{run_id}/compare/").content.decode(),
        json.dumps(list(Replay.objects.values()), default=str),
        json.dumps(list(AuditEntry.objects.values()), default=str),
    ):
        assert key not in text


# -- run again with edits ------------------------------------------------------------


def test_run_again_with_an_edited_input_links_back_and_compares(
    ops: Client, vera: Client, shared_worker: InProcessWorker, on_temporal: str
) -> None:
    workflow_id, run_id = triage_run(on_temporal, shared_worker.task_queue)
    again = f"/runs/{workflow_id}/{run_id}/again/"
    page = ops.get(again)
    assert page.status_code == 200 and page.context["editable"] is True
    assert json.loads(page.context["input"]) == {"prompt": TECHNICAL, "faults": None}
    # The Actions card opens the editor first for a bundled workflow.
    card = ops.get(f"/runs/{workflow_id}/{run_id}/actions/", headers={"HX-Request": "true"})
    assert f'href="{again}" data-run-again-edit' in card.content.decode()

    assert vera.post(again, {"input": "{}"}).status_code == 403
    for bad, message in (
        ('{"prompt": ""}', "the prompt is empty"),
        ('{"prompt": "hi", "temperature": 2}', "has no field temperature"),
        ('{"prompt": "hi", "faults": ["call=x"]}', "bad fault spec"),
        ("[1, 2", "not valid JSON"),
    ):
        response = ops.post(again, {"input": bad, "task_queue": shared_worker.task_queue})
        assert response.status_code == 400, bad
        assert message in response.context["error"]

    edited = {"prompt": BILLING, "faults": ["call=2:fail=1"]}
    response = ops.post(
        again, {"input": json.dumps(edited), "task_queue": shared_worker.task_queue}
    )
    assert response.status_code == 302, response.content[:500]
    _, new_workflow_id, new_run_id, _ = response["Location"].split("/")[1:]
    assert new_workflow_id.startswith(f"{workflow_id}-again-")

    async def result() -> Any:
        client = await connect_client(on_temporal)
        handle = client.get_workflow_handle(new_workflow_id, run_id=new_run_id)
        await handle.result()
        return (await handle.fetch_history()).events[0]

    started = asyncio.run(result()).workflow_execution_started_event_attributes
    assert started.identity == "loomview:ops"
    payload = json.loads(started.input.payloads[0].data)
    assert payload == edited
    entries = list(AuditEntry.objects.filter(action="run_again").order_by("id"))
    assert [(e.username, e.outcome) for e in entries] == [("vera", "denied")] + [
        ("ops", "error")
    ] * 4 + [("ops", "ok")]
    assert entries[-1].payload["edited"] is True and entries[-1].payload["input"] == edited
    # The new run links back, with the comparison to the original.
    new_card = ops.get(f"/runs/{new_workflow_id}/{new_run_id}/compare/").content.decode()
    assert "Compare with the original" in new_card
    from dashboard.compare import compare_url

    assert (
        compare_url((workflow_id, run_id), (new_workflow_id, new_run_id)).replace("&", "&amp;")
        in new_card
    )


def test_replays_go_with_their_run_under_retention(settings: Any) -> None:
    from tests.tracing.test_retention import ingest
    from tracing import retention

    settings.LOOMVIEW_RETENTION_DAYS = 30
    ingest("old", 45)
    ingest("new", 2)
    for workflow_id in ("old", "new"):
        Replay.objects.create(
            workflow_id=workflow_id, run_id="run-1", activity_id="1", task_queue="q"
        )
    retention.prune(pause=0)
    assert list(Replay.objects.values_list("workflow_id", flat=True)) == ["new"]


def test_a_replay_the_server_refuses_says_why(
    ops: Client,
    shared_worker: InProcessWorker,
    inprocess_worker_factory: InProcessWorkerFactory,
    fake_openai: FakeOpenAI,
    on_temporal: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + secrets.token_hex(16))
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url)
    openai_worker = inprocess_worker_factory(provider="openai")
    workflow_id, run_id = triage_run(on_temporal, shared_worker.task_queue)
    values = form_values(ops, workflow_id, run_id)
    values.update(model="no-such-model", task_queue=openai_worker.task_queue)
    response = ops.post(editor_url(workflow_id, run_id), values)
    replay = finished(ops, response["Location"])
    # One attempt, no retries: the server's refusal is the replay's answer.
    assert replay.status == "failed" and len(fake_openai.requests) == 1
    assert "404" in replay.error
    page = ops.get(f"/replays/{replay.pk}/").content.decode()
    assert "The replay failed" in page and "404" in page


def test_a_replay_runs_its_model_activity_where_the_call_ran(
    ops: Client, inprocess_worker_factory: InProcessWorkerFactory, on_temporal: str
) -> None:
    models_queue = f"test-models-{uuid.uuid4().hex[:8]}"
    split = inprocess_worker_factory(model_task_queue=models_queue)
    workflow_id, run_id = triage_run(on_temporal, split.task_queue)
    values = form_values(ops, workflow_id, run_id)
    response = ops.post(editor_url(workflow_id, run_id), values)
    replay = finished(ops, response["Location"])
    assert replay.status == "completed", replay.error

    async def scheduled_on() -> list[str]:
        client = await connect_client(on_temporal)
        handle = client.get_workflow_handle(replay.replay_workflow_id, run_id=replay.replay_run_id)
        return [
            e.activity_task_scheduled_event_attributes.task_queue.name
            for e in (await handle.fetch_history()).events
            if e.HasField("activity_task_scheduled_event_attributes")
        ]

    assert asyncio.run(scheduled_on()) == [models_queue]

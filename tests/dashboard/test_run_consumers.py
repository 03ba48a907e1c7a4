import re
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.core.cache import cache
from temporalio.api.history.v1 import History

from dashboard import temporal
from dashboard.routing import websocket_urlpatterns
from tests.dashboard.run_fixtures import history_proto, recorded, store_spans
from tracing.groups import run_group

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def open_run(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The recorded run as seen while still open: its history without the close event."""
    # Another test may have cached this run's closed history.
    cache.clear()
    run = recorded()
    run["live_events"] = history_proto(run).events[:-1]

    async def fake(workflow_id: str, run_id: str) -> temporal.RunHistory:
        return temporal.RunHistory(workflow_id, run_id, History(events=run["live_events"]))

    async def fake_state(workflow_id: str, run_id: str) -> temporal.RunState:
        events = run["live_events"]
        return temporal.RunState(len(events), len(events) < len(history_proto(run).events))

    monkeypatch.setattr(temporal, "fetch_history", fake)
    monkeypatch.setattr(temporal, "run_state", fake_state)
    return run


def communicator(run: dict[str, Any], user: Any, seen: str) -> WebsocketCommunicator:
    path = f"/ws/runs/{run['workflow_id']}/{run['run_id']}/?v={seen}"
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    comm.scope["user"] = user  # type: ignore[typeddict-unknown-key]
    return comm


async def test_anonymous_users_are_refused(open_run: dict[str, Any]) -> None:
    comm = communicator(open_run, AnonymousUser(), "")
    connected, _ = await comm.connect()
    assert not connected
    await comm.disconnect()


async def test_new_spans_and_events_push_oob_partials(open_run: dict[str, Any]) -> None:
    user = await User.objects.acreate(username="ada")
    events = len(open_run["live_events"])
    comm = communicator(open_run, user, f"{events}-0")
    connected, _ = await comm.connect()
    assert connected
    try:
        # Nothing new since the page was rendered: nothing is sent.
        assert await comm.receive_nothing(timeout=1.5)

        await sync_to_async(store_spans)(open_run)
        layer = get_channel_layer()
        assert layer is not None
        await layer.group_send(
            run_group(open_run["workflow_id"], open_run["run_id"]),
            {"type": "run.spans", "new_spans": len(open_run["spans"])},
        )
        html = await comm.receive_from(timeout=5)
        assert '<section id="run-header" class="run-header" hx-swap-oob="outerHTML">' in html
        assert 'id="run-timeline"' in html and 'id="run-trace"' in html
        assert 'data-status="RUNNING"' in html
        assert "RunWorkflow:triage" in html

        # The run completes: the next poll of Temporal picks up the close event.
        open_run["live_events"] = history_proto(open_run).events
        html = await comm.receive_from(timeout=5)
        assert 'data-status="COMPLETED"' in html
    finally:
        await comm.disconnect()


async def test_a_live_page_keeps_the_search_it_was_opened_with(open_run: dict[str, Any]) -> None:
    user = await User.objects.acreate(username="grace")
    await sync_to_async(store_spans)(open_run)
    path = f"/ws/runs/{open_run['workflow_id']}/{open_run['run_id']}/?v=stale&q=Dashboard%20sync"
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    comm.scope["user"] = user  # type: ignore[typeddict-unknown-key]
    connected, _ = await comm.connect()
    assert connected
    try:
        html = str(await comm.receive_from(timeout=5))
        # The re-rendered trace says what was searched and marks the spans holding it.
        assert 'data-search-text="Dashboard sync"' in html
        assert re.search(r'class="span-row[^"]*\bis-match\b[^"]*\bcall-row\b', html)
    finally:
        await comm.disconnect()

import asyncio
import re
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from temporalio.client import Client as TemporalClient

from dashboard import runs as run_list
from dashboard.routing import websocket_urlpatterns
from tests.dashboard.runs_data import T0, summary

pytestmark = pytest.mark.django_db(transaction=True)

app = URLRouter(websocket_urlpatterns)


async def communicator(user: Any, query: str = "") -> WebsocketCommunicator:
    comm = WebsocketCommunicator(app, f"/ws/runs/?{query}")
    comm.scope["user"] = user  # type: ignore[typeddict-unknown-key]
    return comm


async def changed(*keys: tuple[str, str]) -> None:
    layer = get_channel_layer()
    assert layer is not None
    await layer.group_send(
        "runs",
        {"type": "runs.changed", "runs": [{"workflow_id": w, "run_id": r} for w, r in keys]},
    )


@pytest.fixture
async def ada() -> User:
    return await User.objects.acreate(username=f"ada-{uuid.uuid4().hex[:6]}")


async def test_anonymous_connection_is_closed(closed_temporal_address: str) -> None:
    comm = await communicator(AnonymousUser())
    connected, _ = await comm.connect()
    assert not connected
    await comm.disconnect()


async def test_runs_changed_prepends_then_replaces_the_row(
    ada: User, closed_temporal_address: str
) -> None:
    comm = await communicator(ada)
    connected, _ = await comm.connect()
    assert connected
    # The consumer reads the page it is attached to just after accepting.
    assert await comm.receive_nothing(timeout=0.3)
    try:
        await sync_to_async(summary)("live-<b>run</b>", agents=["Agent <i>"])
        await changed(("live-<b>run</b>", "r1"))
        first = str(await comm.receive_from(timeout=3))
        row_id = run_list.dom_id("live-<b>run</b>", "r1")
        assert first.startswith('<tbody hx-swap-oob="afterbegin:#runs-rows">')
        assert f'<tr id="{row_id}"' in first
        assert "live-&lt;b&gt;run&lt;/b&gt;" in first and "<b>" not in first
        assert "Agent &lt;i&gt;" in first

        await changed(("live-<b>run</b>", "r1"))
        second = str(await comm.receive_from(timeout=3))
        assert second.startswith(f'<tr id="{row_id}" class="run-row" hx-swap-oob="true">')
    finally:
        await comm.disconnect()


async def test_changes_outside_the_filters_are_not_sent(
    ada: User, closed_temporal_address: str
) -> None:
    comm = await communicator(ada, "type=approval")
    connected, _ = await comm.connect()
    assert connected
    # The consumer reads the page it is attached to just after accepting.
    assert await comm.receive_nothing(timeout=0.3)
    try:
        await sync_to_async(summary)("other-type", workflow_type="triage")
        await sync_to_async(summary)("wanted", workflow_type="approval", start_ns=T0 + 5)
        await changed(("other-type", "r1"))
        assert await comm.receive_nothing(timeout=0.5)
        await changed(("wanted", "r1"))
        assert run_list.dom_id("wanted", "r1") in await comm.receive_from(timeout=3)
    finally:
        await comm.disconnect()


async def test_run_started_in_temporal_without_spans_is_pushed(
    ada: User, temporal_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    workflow_type = f"LiveProbe{uuid.uuid4().hex[:6]}"
    comm = await communicator(ada, f"type={workflow_type}")
    connected, _ = await comm.connect()
    assert connected
    # The consumer reads the page it is attached to just after accepting.
    assert await comm.receive_nothing(timeout=0.3)
    try:
        client = await TemporalClient.connect(temporal_server.address)
        handle = await client.start_workflow(
            workflow_type, id=f"live-{workflow_type}", task_queue=f"nobody-{workflow_type}"
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        message = str(await comm.receive_from(timeout=5))
        assert loop.time() - started < 3
        assert "afterbegin:#runs-rows" in message
        assert f"live-{workflow_type}" in message and "Running" in message
        await handle.terminate("test over")
        update = str(await comm.receive_from(timeout=5))
        assert 'hx-swap-oob="true"' in update and "Terminated" in update
    finally:
        await comm.disconnect()


async def test_a_searched_row_keeps_its_snippet_and_link_when_it_changes(
    ada: User, closed_temporal_address: str
) -> None:
    from tests.dashboard.run_fixtures import recorded, store_spans

    run = recorded()
    await sync_to_async(store_spans)(run)
    key = (run["workflow_id"], run["run_id"])
    await sync_to_async(summary)(*key)
    comm = await communicator(ada, "q=Dashboard+sync")
    connected, _ = await comm.connect()
    assert connected
    assert await comm.receive_nothing(timeout=0.3)
    try:
        await changed(key)
        html = str(await comm.receive_from(timeout=3))
        assert html.startswith(f'<tr id="{run_list.dom_id(*key)}"')
        # As the page showed it: the words around the match, marked, and the run's
        # link carrying the search to its page.
        assert re.search(r"data-match[^>]*>[^<]*<mark>dashboard</mark>", html, re.IGNORECASE)
        assert f'{run["run_id"]}/?q=Dashboard%20sync"' in html
    finally:
        await comm.disconnect()

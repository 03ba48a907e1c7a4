"""The run page links to the run's trace in OpenAI's dashboard only when the worker sent it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from dashboard import temporal
from tests.dashboard.run_fixtures import history_proto, recorded
from tracing.models import Span

pytestmark = pytest.mark.django_db

OPENAI_TRACES = "agents.openai_traces"


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    cache.clear()
    data = recorded()

    async def fake(workflow_id: str, run_id: str) -> temporal.RunHistory:
        return temporal.RunHistory(workflow_id, run_id, history_proto(data))

    monkeypatch.setattr(temporal, "fetch_history", fake)
    return data


def store(run: dict[str, Any], **extra: Any) -> str:
    """Stores the run's spans, ``extra`` added to each bridged span; returns its Agents trace id."""
    rows = copy.deepcopy(run["spans"])
    trace_ids = set()
    for row in rows:
        attributes = row["data"]["attributes"]
        if "agents.trace_id" in attributes:
            attributes.update(extra)
            trace_ids.add(attributes["agents.trace_id"])
    Span.objects.bulk_create(Span(**row) for row in rows)
    (trace_id,) = trace_ids
    return str(trace_id)


def page(client: Client, run: dict[str, Any]) -> str:
    response = client.get(f"/runs/{run['workflow_id']}/{run['run_id']}/")
    assert response.status_code == 200
    return response.content.decode()


def test_no_link_when_openai_traces_were_off(logged_in_client: Client, run: dict[str, Any]) -> None:
    store(run)
    body = page(logged_in_client, run)
    assert "Open in Temporal UI" in body
    assert "data-openai-trace" not in body and "platform.openai.com" not in body


def test_link_to_the_runs_openai_trace_when_on(
    logged_in_client: Client, run: dict[str, Any]
) -> None:
    trace_id = store(run, **{OPENAI_TRACES: True})
    body = page(logged_in_client, run)
    link = f"https://platform.openai.com/traces/trace?trace_id={trace_id}"
    assert body.count("data-openai-trace") == 1
    assert f'href="{link}"' in body
    assert "Open in OpenAI Traces ↗" in body


@pytest.mark.parametrize(
    "value",
    [
        {OPENAI_TRACES: "true"},  # not the boolean the worker writes
        {OPENAI_TRACES: True, "agents.trace_id": 'trace_x" onmouseover="alert(1)'},
        {OPENAI_TRACES: True, "agents.trace_id": "javascript:alert(1)"},
    ],
)
def test_sender_controlled_values_make_no_link(
    logged_in_client: Client, run: dict[str, Any], value: dict[str, Any]
) -> None:
    rows = copy.deepcopy(run["spans"])
    for row in rows:
        if "agents.trace_id" in row["data"]["attributes"]:
            row["data"]["attributes"].update(value)
    Span.objects.bulk_create(Span(**row) for row in rows)
    body = page(logged_in_client, run)
    assert "data-openai-trace" not in body and "alert(1)" not in body

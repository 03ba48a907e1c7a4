"""The instrumentation matrix: apps nobody here wrote, instrumented only with stock packages.

Each row is ``tests/tracing/matrix_app.py`` with one instrumentation (see its
docstring), on the real dev server, exporting with the real OTLP/HTTP exporter
into the real receiver; each runs the same workflow with the SDK's workflow
cache and with ``max_cached_workflows=0``. One process per row: tracer
providers and instrumentors are process-global, so rows cannot share one.

For every row and both cache settings:

- every ``invoke_model_activity`` in the history is matched to spans, with
  every attempt (where the instrumentation exports activity spans at all, see
  ``ACTIVITY_SPANS_LOST``);
- agents, tools and handoffs are recognised as such, and trace roots are not
  agents (all of them, where the instrumentation does not reuse span ids, see
  ``SPAN_IDS_REUSED``);
- tokens equal the scripted model's usage;
- no span is left without its run;
- the runs list's agents, calls, attempts and tokens are filled in.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from temporalio.client import Client

from dashboard import linker
from dashboard import runs as run_list
from tests.conftest import ROOT, TemporalServer
from tests.tracing import matrix_app
from tracing.correlation import RunStory, correlate, handoff_agents
from tracing.models import RunSummary, Span
from tracing.store import spans_for_run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

APP = Path(matrix_app.__file__)
# opentelemetry-instrumentation-openai-agents-v2 shares its import name with
# OpenLLMetry's package, so `make install` puts it in a directory of its own.
GENAI_PATH = ROOT / ".venv" / "side" / "openai-agents-v2"
MODEL_CALLS = len(matrix_app.USAGE)  # each scripted call once; the specialist's retried
TOKENS_IN = sum(usage[0] for usage in matrix_app.USAGE.values())
TOKENS_OUT = sum(usage[1] for usage in matrix_app.USAGE.values())
# Where an instrumentation exports no span of the model activity itself:
# OpenInference's processor records only traces it started in this process, so
# in the plugin's own OTel mode the activity side of a trace is dropped once
# the workflow that started it was evicted (max_cached_workflows=0), as it is
# on any worker other than the workflow's. The history still counts those
# calls, their attempts and their tokens.
ACTIVITY_SPANS_LOST = {
    ("native", "nocache"),
    ("native-quiet", "nocache"),
    ("native+otel", "nocache"),
}
# Where an instrumentation reuses span ids: with the replay-safe provider of
# create_tracer_provider() (what OpenTelemetryPlugin asks for), span ids in a
# workflow come from the workflow's seeded random; the Agents SDK calls its
# processors (OpenLLMetry's, the GenAI one's) only outside replay, so once the
# workflow is evicted (max_cached_workflows=0) every workflow task replays and
# hands out the same ids again, to different spans. A trace then has several
# spans under one id; a receiver keeps one (OTLP's id is the identity), so some
# agent, tool and handoff spans are lost. Temporal's own spans and the model
# calls are not affected.
# Where the runs list counts only the usage that spans reported: spans were lost
# (see ACTIVITY_SPANS_LOST) but the run has Temporal spans with ids of its own
# (OpenTelemetryPlugin's), so nothing tells the store that its spans fall short
# but the history; the store reads the history's usage only for runs whose
# spans are tied through it, or that reported no usage at all (a reset run's
# history also holds the calls it inherited). The run page counts the history.
RUNS_LIST_TOKENS_FROM_SPANS = {("native+otel", "nocache")}
SPAN_IDS_REUSED = {
    ("otel+openllmetry", "nocache"),
    ("otel+genai", "nocache"),
}


def test_the_app_imports_nothing_of_loomview() -> None:
    tree = ast.parse(APP.read_text())
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported.isdisjoint({"tracing", "telemetry", "dashboard", "worker", "tests"})


async def run_app(row: str, address: str, endpoint: str) -> list[dict[str, str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in list(env):
        if name.startswith("OTEL_"):
            del env[name]
    # The app is started by path, as a user's script is: nothing of the repository
    # is importable, except the GenAI instrumentation that lives apart.
    env["PYTHONPATH"] = str(GENAI_PATH) if row == "otel+genai" else ""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(APP),
        row,
        address,
        endpoint,
        f"matrix-{row}-{uuid.uuid4().hex[:6]}",
        cwd=APP.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    output, errors = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode == 0, errors.decode()[-4000:]
    return [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]


@sync_to_async
def stored(workflow_id: str, run_id: str) -> list[dict[str, Any]]:
    return spans_for_run(workflow_id, run_id)


@sync_to_async
def service_spans(service: str) -> list[Any]:
    return list(
        Span.objects.filter(service_name=service).values(
            "name", "kind", "workflow_id", "run_id", "span_id"
        )
    )


@sync_to_async
def summary(workflow_id: str, run_id: str) -> RunSummary | None:
    return RunSummary.objects.filter(workflow_id=workflow_id, run_id=run_id).first()


def complete(story: RunStory, spans: list[dict[str, Any]], lost: bool, reused: bool) -> bool:
    if len(story.model_calls) != MODEL_CALLS:
        return False
    if not lost and not all(
        c.matched and all(a.matched for a in c.attempts) for c in story.model_calls
    ):
        return False
    kinds = Counter(s["kind"] for s in spans)
    return reused or (kinds["handoff"] >= 1 and kinds["agent"] >= 3)


@pytest.mark.parametrize("row", matrix_app.ROWS)
async def test_instrumentation_matrix(
    row: str, temporal_server: TemporalServer, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dashboard side (linker, runs list) talks to the same server.
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    runs = await run_app(row, temporal_server.address, f"{live_server.url}/v1/traces")
    assert [r["cache"] for r in runs] == ["cached", "nocache"]
    client = await Client.connect(temporal_server.address)
    for run in runs:
        workflow_id, run_id, cache = run["workflow_id"], run["run_id"], run["cache"]
        where = f"{row} / {cache}"
        lost = (row, cache) in ACTIVITY_SPANS_LOST
        reused = (row, cache) in SPAN_IDS_REUSED
        events = list((await client.get_workflow_handle(workflow_id).fetch_history()).events)
        # Spans arrive in batches (the native mode's workflow side when spans end);
        # the background linker ties what carries no ids. Wait until nothing changes.
        deadline = time.monotonic() + 60
        while True:
            await linker.link_pending()
            spans = await stored(workflow_id, run_id)
            story = correlate(events, spans)
            if complete(story, spans, lost, reused) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)

        # Every model activity, with every attempt the history records.
        assert [c.activity_id for c in story.model_calls if c.scheduled_ns] == [
            e.activity_task_scheduled_event_attributes.activity_id
            for e in events
            if e.activity_task_scheduled_event_attributes.activity_type.name
            == "invoke_model_activity"
        ], where
        attempts = [len(c.attempts) for c in story.model_calls]
        assert sorted(attempts) == [1] * (MODEL_CALLS - 1) + [2], where
        retried = next(c for c in story.model_calls if len(c.attempts) == 2)
        assert [a.outcome for a in retried.attempts] == ["failed", "completed"], where
        if not lost:
            for call in story.model_calls:
                assert call.matched, f"{where}: model call {call.activity_id} unmatched"
                unmatched = [a.number for a in call.attempts if not a.matched]
                assert unmatched == [], f"{where}: call {call.activity_id} attempts {unmatched}"
        per_call = [(c.activity_id, c.tokens_in, c.tokens_out) for c in story.model_calls]
        assert (story.tokens_in, story.tokens_out) == (TOKENS_IN, TOKENS_OUT), (where, per_call)

        # Agents, tools and handoffs as such; trace roots are not agents.
        agents = {s["agent"] for s in spans if s["kind"] == "agent"}
        tools = {s["tool"] or s["name"] for s in spans if s["kind"] == "function"}
        handoffs = [handoff_agents(s) for s in spans if s["kind"] == "handoff"]
        assert agents <= set(matrix_app.AGENTS), where
        assert all(h[0] == matrix_app.TRIAGE for h in handoffs), (where, handoffs)
        if not reused:
            assert agents == set(matrix_app.AGENTS), where
            assert all(any(t in name for name in tools) for t in matrix_app.TOOLS), (where, tools)
            assert handoffs, where
            assert any(h[1] == matrix_app.SPECIALIST for h in handoffs) or (
                row == "otel+openllmetry"  # it names the target "unknown"
            ), (where, handoffs)
            assert [i.kind for i in story.items].count("handoff") >= 1, where

        # The runs list: agents, calls, attempts and tokens.
        (listed,) = await run_list.rows_for({(workflow_id, run_id)}, run_list.Filters())
        assert sorted(listed.agents) == sorted(agents), where
        assert reused or sorted(listed.agents) == sorted(matrix_app.AGENTS), where
        assert (listed.model_calls, listed.attempts, listed.failed_attempts) == (
            MODEL_CALLS,
            MODEL_CALLS + 1,
            1,
        ), where
        if (row, cache) in RUNS_LIST_TOKENS_FROM_SPANS:
            reported = [s for s in spans if s["kind"] in ("generation", "response")]
            usage = (
                sum(s["tokens_in"] or 0 for s in reported),
                sum(s["tokens_out"] or 0 for s in reported),
            )
            # A run whose spans reported no usage at all is counted from its history.
            expected = usage if usage != (0, 0) else (TOKENS_IN, TOKENS_OUT)
            assert (listed.tokens_in, listed.tokens_out) == expected, where
        else:
            assert (listed.tokens_in, listed.tokens_out) == (TOKENS_IN, TOKENS_OUT), where
        for agent in ("Agent workflow", "Agent Workflow", "OpenAI Agent"):
            assert agent not in listed.agents, where

    # No span is left without its run.
    untied = [
        (s["name"], s["span_id"])
        for s in await service_spans(f"matrix-{row}")
        if not (s["workflow_id"] and s["run_id"])
    ]
    assert untied == [], row

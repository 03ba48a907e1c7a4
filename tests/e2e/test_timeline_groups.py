"""The timeline's merged bars in Chromium: where model calls are too narrow to draw one by
one, they merge into a group per lane. A group is red only when every attempt in it
failed; a few failed attempts among many calls are a tick each, where they happened.

The run is spans only (no Temporal behind the dashboard), sent through the receiver:
an agent with 200 short back-to-back calls, three of them retried once, and an agent
whose 20 calls all failed.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer
from playwright.sync_api import Browser, expect

from tests.e2e.conftest import LiveDashboard, log_in, watch_problems
from tests.tracing.spans import protobuf_body, record

WORKFLOW_ID = "wf-dense-calls"
RUN_ID = "run-dense-calls"
T0 = 1_780_000_000_000_000_000  # ns
MS = 1_000_000
RETRIED = {40, 41, 150}  # calls whose first attempt failed
STEADY_CALLS = 200
FAILING_CALLS = 20


def _dense_run(tracer: Tracer) -> None:
    ids = {"temporalWorkflowID": WORKFLOW_ID, "temporalRunID": RUN_ID}
    end = T0 + (STEADY_CALLS + FAILING_CALLS + 10) * 6 * MS
    root = tracer.start_span("RunWorkflow:SupportWorkflow", attributes=ids, start_time=T0)
    at = T0 + MS
    activity_no = 0

    def attempt(agent_ctx: Any, number: int, failed: bool, at: int) -> int:
        """One attempt: the activity span and its LLM span, 4 ms long, 1 ms apart."""
        activity = tracer.start_span(
            "RunActivity:invoke_model_activity",
            context=agent_ctx,
            attributes={
                **ids,
                "temporalActivityID": str(activity_no),
                "temporal.activity.attempt": number,
            },
            start_time=at,
        )
        llm = tracer.start_span(
            "ChatCompletion",
            context=trace.set_span_in_context(activity),
            attributes={
                "openinference.span.kind": "LLM",
                "llm.model_name": "demo-model",
                "llm.token_count.prompt": 10,
                "llm.token_count.completion": 2,
            },
            start_time=at,
        )
        if failed:
            llm.set_status(Status(StatusCode.ERROR, f"call {activity_no} attempt {number} failed"))
            activity.set_status(Status(StatusCode.ERROR, f"attempt {number} failed"))
        llm.end(end_time=at + 4 * MS)
        activity.end(end_time=at + 4 * MS)
        return at + 5 * MS

    for agent_name, calls in (("Steady", STEADY_CALLS), ("Doomed", FAILING_CALLS)):
        agent = tracer.start_span(
            agent_name,
            context=trace.set_span_in_context(root),
            attributes={**ids, "agents.span.type": "agent", "gen_ai.agent.name": agent_name},
            start_time=at,
        )
        agent_ctx = trace.set_span_in_context(agent)
        for call in range(calls):
            activity_no += 1
            if agent_name == "Doomed":
                at = attempt(agent_ctx, 1, True, at)
                continue
            if call in RETRIED:
                at = attempt(agent_ctx, 1, True, at)
            at = attempt(agent_ctx, 2 if call in RETRIED else 1, False, at)
        agent.end(end_time=at)
        at += MS
    root.end(end_time=max(at, end))


def _send(live: LiveDashboard) -> None:
    request = urllib.request.Request(
        f"{live.url}/v1/traces",
        data=protobuf_body(record(_dense_run)),
        headers={"Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def test_a_group_is_red_only_when_all_its_attempts_failed(
    chromium: Browser, live_dashboard: LiveDashboard, results_dir: Path
) -> None:
    _send(live_dashboard)
    page = chromium.new_page(viewport={"width": 1440, "height": 1000})
    problems = watch_problems(page, http_errors=False)
    log_in(page, live_dashboard)
    page.goto(f"{live_dashboard.url}/runs/{WORKFLOW_ID}/{RUN_ID}/")
    groups = page.locator("[data-timeline] rect.tl-group")
    expect(groups.first).to_be_attached()

    found = groups.evaluate_all(
        """rects => rects.map(r => ({
            lane: Math.round(r.y.baseVal.value),
            count: Number(r.dataset.count),
            failed: Number(r.dataset.failed),
            red: r.classList.contains("failed"),
            x0: r.x.baseVal.value,
            x1: r.x.baseVal.value + r.width.baseVal.value,
        }))"""
    )
    lanes: dict[int, list[dict[str, Any]]] = {}
    for group in found:
        lanes.setdefault(group["lane"], []).append(group)
    assert len(lanes) == 2, found
    steady_lane, doomed_lane = sorted(lanes)  # lanes in order of first call: Steady, Doomed
    steady, doomed = lanes[steady_lane], lanes[doomed_lane]

    # Every attempt of each lane is in a group (the bars are ~2 px wide, 0.5 px apart).
    assert sum(g["count"] for g in steady) == STEADY_CALLS + len(RETRIED), steady
    assert sum(g["failed"] for g in steady) == len(RETRIED), steady
    assert sum(g["count"] for g in doomed) == FAILING_CALLS, doomed
    # A few failures among many calls do not paint the group red...
    assert not any(g["red"] for g in steady), steady
    # ...they are one tick each, inside the group that holds them.
    ticks = page.locator("[data-timeline] rect.tl-group-fail").evaluate_all(
        "rects => rects.map(r => ({lane: Math.round(r.y.baseVal.value), x: r.x.baseVal.value}))"
    )
    assert len(ticks) == len(RETRIED), ticks
    assert all(t["lane"] == steady_lane for t in ticks), ticks
    assert all(any(g["x0"] <= t["x"] <= g["x1"] for g in steady) for t in ticks), (ticks, steady)
    # A group whose attempts all failed is red, with no ticks of its own.
    assert all(g["red"] and g["failed"] == g["count"] for g in doomed), doomed

    # The group's tooltip says how many failed; a click zooms in until calls are bars.
    tips = groups.evaluate_all("rects => rects.map(r => r.querySelector('title').textContent)")
    assert any(", 1 failed" in t or ", 2 failed" in t or ", 3 failed" in t for t in tips), tips
    page.locator("[data-timeline]").scroll_into_view_if_needed()
    page.screenshot(path=str(results_dir / "timeline-groups.png"), full_page=True)
    assert problems == [], problems

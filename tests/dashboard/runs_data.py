"""Helpers for runs-list tests: store rows and a stand-in visibility."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard import temporal
from tracing.models import RunSummary, Span

T0 = 1_780_000_000_000_000_000  # ns, a fixed instant


def at(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def summary(workflow_id: str, run_id: str = "r1", start_ns: int = T0, **fields: Any) -> RunSummary:
    defaults: dict[str, Any] = {
        "workflow_type": "triage",
        "span_count": 4,
        "model_calls": 2,
        "attempts": 3,
        "failed_attempts": 1,
        "tokens_in": 1200,
        "tokens_out": 300,
        "agents": ["Triage Agent"],
        "first_span_ns": start_ns,
        "last_span_ns": start_ns + 2_500_000_000,
        "last_error": "",
        "model_attempts": {},
    }
    defaults.update(fields)
    return RunSummary.objects.create(workflow_id=workflow_id, run_id=run_id, **defaults)


def model_span(workflow_id: str, run_id: str, model: str, tokens_in: int, tokens_out: int) -> Span:
    return Span.objects.create(
        trace_id=f"{abs(hash((workflow_id, run_id, model))):032x}"[:32],
        span_id=f"{abs(hash((model, tokens_in))):016x}"[:16],
        name="generation",
        kind="generation",
        workflow_id=workflow_id,
        run_id=run_id,
        activity_id="1",
        model=model,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        start_ns=T0,
        end_ns=T0 + 1,
        duration_ns=1,
    )


def visible(
    workflow_id: str,
    run_id: str = "r1",
    start_ns: int = T0,
    status: str = "RUNNING",
    workflow_type: str = "triage",
    close_ns: int | None = None,
) -> temporal.VisibilityRun:
    return temporal.VisibilityRun(
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type=workflow_type,
        status=status,
        start_time=at(start_ns),
        close_time=None if close_ns is None else at(close_ns),
    )


class FakeVisibility:
    """Returns its runs for any query (the list filters again locally) and records queries."""

    def __init__(self, runs: list[temporal.VisibilityRun]) -> None:
        self.runs = runs
        self.queries: list[str] = []

    async def __call__(self, query: str, limit: int) -> list[temporal.VisibilityRun]:
        self.queries.append(query)
        return self.runs[:limit]

"""Span ids that belong to one run, so a reset run's spans never reuse its original's.

Temporal's replay-safe tracing makes span ids deterministic: inside a workflow
they come from the workflow's seeded random (Temporal's ``TemporalIdGenerator``
for OTel spans, ``TemporalTraceProvider`` for Agents SDK spans). A reset run
replays its original's history with the original's seed up to the reset point,
so every span *created* before that point gets the same id in both runs. The
ones that *end* after it (the workflow's root span, the trace, the agent that
was running) are emitted again by the new run with their old ids: a collector
keeps the first copy, so the new run loses its root and the spans below it point
at parents that belong to the old run.

Mixing the run id into every id generated inside a workflow keeps ids
deterministic for a run (a replay of the same run gives the same ids) and makes
them distinct between runs. Activities mix in their workflow's run id, so a
span in an activity still finds its parent in the workflow. A parent that lives
in another run (a child workflow's first span sits under its parent workflow's
``temporal:startChildWorkflow`` span; a client's span above a workflow) keeps
that run's scope: :class:`RunScopeInterceptor` records where each propagated
Agents SDK parent came from.

Pure Python: no Django.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from typing import Any

import opentelemetry.sdk.trace as trace_sdk
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Tracer
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.contrib.opentelemetry import ReplaySafeTracerProvider
from temporalio.contrib.opentelemetry._id_generator import TemporalIdGenerator
from temporalio.contrib.opentelemetry._tracer_provider import _ReplaySafeTracer
from temporalio.converter import PayloadConverter
from temporalio.plugin import SimplePlugin
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from telemetry.temporal_spans import LeanTracer

# The header temporalio.openai_agents writes with the caller's Agents SDK trace
# and span ids (temporalio.openai_agents._trace_interceptor.HEADER_KEY).
OPENAI_SPAN_HEADER = "__openai_span"
_REMOTE = "__loomview_remote_parents"


def _mixed(scope: str, value: int, bits: int) -> int:
    digest = hashlib.sha256(f"{scope}:{value}".encode()).digest()
    return int.from_bytes(digest[: bits // 8], "big") or 1


def current_scope() -> str:
    """The run that spans made here belong to: the workflow's run id in a workflow or
    one of its activities; "" elsewhere (a client), where ids are random anyway."""
    if workflow.in_workflow():
        return workflow.info().run_id
    if activity.in_activity():
        return activity.info().workflow_run_id or ""
    return ""


class RunScopedIdGenerator(TemporalIdGenerator):
    """Temporal's deterministic ids, made distinct per run inside a workflow."""

    def generate_span_id(self) -> int:
        value = super().generate_span_id()
        if not _in_writable_workflow():
            return value
        return _mixed(workflow.info().run_id, value, 64)

    def generate_trace_id(self) -> int:
        value = super().generate_trace_id()
        if not _in_writable_workflow():
            return value
        return _mixed(workflow.info().run_id, value, 128)


def _in_writable_workflow() -> bool:
    # Queries run read-only: Temporal's generator falls back to random ids there.
    return workflow.in_workflow() and not workflow.unsafe.is_read_only()


class _TracerKeepingProvider(ReplaySafeTracerProvider):
    """Temporal's replay-safe tracer provider, keeping the tracers it hands out,
    whose spans are :class:`telemetry.temporal_spans.LeanSpan` records.

    Temporal's interceptors ask for a tracer for every span they start, and the
    SDK provider's ``get_tracer`` re-registers a warnings filter each time
    (about 90 µs). Tracers hold no per-call state, so one per name is enough.
    """

    def __init__(self, provider: trace_sdk.TracerProvider, id_generator: Any) -> None:
        super().__init__(provider, id_generator)
        self._tracers: dict[tuple[str, str | None, str | None], Tracer] = {}

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> Tracer:
        if attributes:
            return super().get_tracer(
                instrumenting_module_name, instrumenting_library_version, schema_url, attributes
            )
        key = (instrumenting_module_name, instrumenting_library_version, schema_url)
        tracer = self._tracers.get(key)
        if tracer is None:
            sdk_tracer = self._tracer_provider.get_tracer(*key)
            lean = (
                LeanTracer(sdk_tracer) if isinstance(sdk_tracer, trace_sdk.Tracer) else sdk_tracer
            )
            tracer = self._tracers[key] = _ReplaySafeTracer(lean)
        return tracer


def run_scoped_tracer_provider(resource: Resource) -> ReplaySafeTracerProvider:
    """``temporalio.contrib.opentelemetry.create_tracer_provider`` with run-scoped ids."""
    generator = RunScopedIdGenerator(RandomIdGenerator())
    provider = trace_sdk.TracerProvider(resource=resource, id_generator=generator)
    return _TracerKeepingProvider(provider, generator)


def remote_parents_of(instance: Any) -> dict[str, str]:
    """A workflow instance's Agents SDK ids that came in a header → the scope of their
    run: one dict for the run, made empty if none came yet (:func:`_record_remote`
    fills it in place, so a reference taken early sees what comes later)."""
    remote: dict[str, str] | None = getattr(instance, _REMOTE, None)
    if remote is None:
        remote = {}
        with contextlib.suppress(AttributeError):  # a class with __slots__: none kept
            setattr(instance, _REMOTE, remote)
    return remote


def _record_remote(headers: Mapping[str, Payload], scope: str) -> None:
    payload = headers.get(OPENAI_SPAN_HEADER)
    if payload is None:
        return
    try:
        contents: Any = PayloadConverter.default.from_payload(payload)
    except Exception:  # a header some other client wrote; nothing to record
        return
    if not isinstance(contents, dict):
        return
    remote = remote_parents_of(workflow.instance())
    for key in ("spanId", "traceId"):
        if isinstance(contents.get(key), str):
            remote.setdefault(contents[key], scope)


class _RemoteParentsInbound(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        parent = workflow.info().parent
        _record_remote(input.headers, parent.run_id if parent is not None else "")
        return await self.next.execute_workflow(input)


class RunScopeInterceptor(Interceptor):
    """Records which run each propagated Agents SDK parent of a workflow belongs to."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _RemoteParentsInbound


class RunScopePlugin(SimplePlugin):
    def __init__(self) -> None:
        super().__init__("loomview.RunScopePlugin", interceptors=[RunScopeInterceptor()])

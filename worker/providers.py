"""Model providers for the model activity: the offline demo model or OpenAI.

Both are wrapped in :class:`FaultInjectingModel`, which applies the faults a run
asked for (passed in the model settings' metadata) before the real model is
called, so retries and fallbacks are real Temporal behaviour on either provider.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from agents import (
    AgentOutputSchemaBase,
    Handoff,
    Model,
    ModelProvider,
    ModelResponse,
    ModelSettings,
    ModelTracing,
    Tool,
    TResponseInputItem,
)
from agents.items import TResponseStreamEvent
from agents.tracing import SpanError, generation_span
from temporalio import activity
from temporalio.exceptions import ApplicationError

from worker.config import ConfigError, WorkerConfig
from worker.demo_model import DEMO_MODEL_NAME, DemoModel
from worker.faults import FAULTS_METADATA_KEY, decode_faults
from worker.model_calls import current_model_call


class InvocationLog:
    """Appends one JSON line per model invocation; lets tests count real executions."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def record(self, **fields: Any) -> None:
        if not self.path:
            return
        line = json.dumps({"ts": time.time(), "pid": os.getpid(), **fields}) + "\n"
        # One write with O_APPEND keeps lines whole across concurrent workers.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def _strip_fault_metadata(settings: ModelSettings) -> tuple[ModelSettings, str | None]:
    metadata = dict(settings.metadata or {})
    encoded = metadata.pop(FAULTS_METADATA_KEY, None)
    return replace(settings, metadata=metadata or None), encoded


class FaultInjectingModel(Model):
    def __init__(self, inner: Model, log: InvocationLog) -> None:
        self.inner = inner
        self.log = log

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        **kwargs: Any,
    ) -> ModelResponse:
        settings, encoded = _strip_fault_metadata(model_settings)
        # The run's Nth model call (tool activities take activity ids too).
        call, attempt, where = current_model_call.get() or 0, 1, {}
        if activity.in_activity():
            info = activity.info()
            attempt = info.attempt
            where = {
                "workflow_id": info.workflow_id,
                "run_id": info.workflow_run_id,
                "activity_id": info.activity_id,
                "attempt": attempt,
                "call": call,
            }
        fault = decode_faults(encoded).get(call)
        if fault is not None and fault.slow_ms:
            await asyncio.sleep(fault.slow_ms / 1000)
        failure = fault.failure_for(attempt) if fault is not None else None
        if failure is not None:
            self.log.record(**where, outcome=f"injected-{failure}")
            message = f"Injected model failure on call {call}, attempt {attempt}: " + (
                "400 Bad Request (non-retryable)"
                if failure == "fatal"
                else "503 Service Unavailable, the model is overloaded"
            )
            self._record_failed_call(model_settings, tracing, message, call, attempt, failure)
            raise ApplicationError(
                message, type="InjectedModelFault", non_retryable=failure == "fatal"
            )
        try:
            response = await self.inner.get_response(
                system_instructions,
                input,
                settings,
                tools,
                output_schema,
                handoffs,
                tracing,
                **kwargs,
            )
        except BaseException as error:
            self.log.record(**where, outcome=f"error: {type(error).__name__}")
            raise
        self.log.record(
            **where,
            outcome="ok",
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
        )
        return response

    def _record_failed_call(
        self,
        settings: ModelSettings,
        tracing: ModelTracing,
        message: str,
        call: int,
        attempt: int,
        failure: str,
    ) -> None:
        """A failed API call still shows as a generation span with its error, as a real one does."""
        if tracing.is_disabled():
            return
        model_name = getattr(self.inner, "model_name", None) or getattr(
            self.inner, "model", "unknown"
        )
        with generation_span(model=str(model_name), model_config=settings.to_json_dict()) as span:
            span.set_error(
                SpanError(
                    message=message,
                    data={"call": call, "attempt": attempt, "kind": failure},
                )
            )

    def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        **kwargs: Any,
    ) -> AsyncIterator[TResponseStreamEvent]:
        settings, _ = _strip_fault_metadata(model_settings)
        return self.inner.stream_response(
            system_instructions,
            input,
            settings,
            tools,
            output_schema,
            handoffs,
            tracing,
            **kwargs,
        )


class DemoModelProvider(ModelProvider):
    def __init__(self, latency_ms: int, log: InvocationLog) -> None:
        self.latency_ms = latency_ms
        self.log = log

    def get_model(self, model_name: str | None) -> Model:
        return FaultInjectingModel(
            DemoModel(model_name or DEMO_MODEL_NAME, self.latency_ms), self.log
        )


class OpenAIModelProvider(ModelProvider):
    """OpenAI, or any OpenAI-compatible server through ``OPENAI_BASE_URL``."""

    def __init__(self, default_model: str, log: InvocationLog) -> None:
        from agents import OpenAIProvider
        from openai import AsyncOpenAI

        # Temporal retries the activity; the client must not retry underneath it.
        # An OpenAI-compatible server (vLLM, Ollama) may need no key at all.
        client = AsyncOpenAI(
            api_key=os.environ.get("OPENAI_API_KEY") or "unused",
            base_url=os.environ.get("OPENAI_BASE_URL") or None,
            max_retries=0,
        )
        self.inner = OpenAIProvider(openai_client=client)
        self.default_model = default_model
        self.log = log

    def get_model(self, model_name: str | None) -> Model:
        return FaultInjectingModel(self.inner.get_model(model_name or self.default_model), self.log)


def build_provider(config: WorkerConfig) -> ModelProvider:
    log = InvocationLog(config.demo_log)
    if config.provider == "openai":
        if not os.environ.get("OPENAI_API_KEY") and not os.environ.get("OPENAI_BASE_URL"):
            raise ConfigError(
                "LOOMVIEW_MODEL_PROVIDER=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL "
                "for an OpenAI-compatible server)"
            )
        return OpenAIModelProvider(config.openai_model, log)
    return DemoModelProvider(config.demo_latency_ms, log)

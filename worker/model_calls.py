"""Model calls numbered as users count them: the Nth ``invoke_model_activity`` of a run.

Temporal numbers every activity of a run in one sequence, so a run that calls a
tool activity (``activity_as_tool``) between two model calls has model calls
with activity ids 1, 2, 4, 5. "Model call 3" means the third model call, here
activity 4: the dashboard counts ``invoke_model_activity`` events in the
history the same way.

The workflow side counts the model activities it schedules (deterministic, so
a replay counts the same) and puts the number in a header of the activity; the
activity side reads it into :data:`current_model_call`, where the fault
injection (worker.providers) finds it.
"""

from __future__ import annotations

import contextvars
from typing import Any

from temporalio import workflow
from temporalio.converter import PayloadConverter
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from telemetry.vocab import MODEL_ACTIVITY_TYPE

# The activity header that carries the model call's number.
MODEL_CALL_HEADER = "loomview-model-call"
_COUNTER = "__loomview_model_calls"

# The number of the model call the current activity runs; None outside one.
current_model_call: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "loomview_model_call", default=None
)


def _next_number() -> int:
    instance = workflow.instance()
    number = int(getattr(instance, _COUNTER, 0)) + 1
    setattr(instance, _COUNTER, number)
    return number


class _NumberingOutbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        if input.activity == MODEL_ACTIVITY_TYPE:
            payload = PayloadConverter.default.to_payload(_next_number())
            input.headers = {**input.headers, MODEL_CALL_HEADER: payload}
        return self.next.start_activity(input)


class _NumberingInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        self.next.init(_NumberingOutbound(outbound))


class _NumberedActivity(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        payload = input.headers.get(MODEL_CALL_HEADER)
        if payload is None:
            return await self.next.execute_activity(input)
        number = PayloadConverter.default.from_payload(payload, int)
        token = current_model_call.set(number)
        try:
            return await self.next.execute_activity(input)
        finally:
            current_model_call.reset(token)


class ModelCallNumbering(Interceptor):
    """Numbers model activities in the workflow and exposes the number in the activity."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _NumberedActivity(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _NumberingInbound

"""Replay one model call: the dashboard's "replay this call", run by the bundled worker.

The workflow runs ``invoke_model_activity`` once with the model input it is
given, on the worker's own model activity, so the call goes through the model
provider the worker is configured with (the demo model, or OpenAI / an
OpenAI-compatible server with the worker's credentials) and never through the
run the call came from. No retries: a replay answers once or says why not.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from telemetry.vocab import MODEL_ACTIVITY_TYPE
    from worker.inputs import REPLAY_WORKFLOW, ReplayInput


@workflow.defn(name=REPLAY_WORKFLOW)
class ReplayModelCallWorkflow:
    @workflow.run
    async def run(self, input: ReplayInput) -> Any:
        # The model's answer as the activity returns it: output items, usage, response id.
        return await workflow.execute_activity(
            MODEL_ACTIVITY_TYPE,
            input.model_input,
            task_queue=input.activity_task_queue,
            start_to_close_timeout=timedelta(seconds=input.timeout_seconds),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )

"""``python -m worker.seed``: start the demo runs, once.

Each demo run has a fixed workflow id and is started with a reject-duplicate id
policy, so seeding again (every ``make run``) starts nothing new.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowUpdateStage
from temporalio.common import WorkflowIDReusePolicy
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfig
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.openai_agents import OpenAIPayloadConverter

from worker.config import WorkerConfig
from worker.inputs import AgentRunInput, ApprovalInput, ConversationInput, Decision


@dataclass(frozen=True)
class DemoRun:
    workflow_id: str
    workflow: str
    input: Any


DEMO_RUNS = [
    DemoRun(
        "demo-triage-billing",
        "triage",
        AgentRunInput("I was charged twice for invoice INV-2231 this month. Please refund it."),
    ),
    DemoRun(
        "demo-triage-retries",
        "triage",
        AgentRunInput(
            "Our dashboard sync is stuck and the app shows errors since this morning.",
            faults=["call=1:fail=2", "call=3:slow=1500"],
        ),
    ),
    DemoRun(
        "demo-approval-waiting",
        "approval",
        ApprovalInput(
            "Rotate the production database credentials and restart the API pods.",
            timeout_seconds=7 * 24 * 3600,
        ),
    ),
    DemoRun(
        "demo-approval-approved",
        "approval",
        ApprovalInput("Scale the search cluster from 3 to 5 nodes before the launch."),
    ),
    DemoRun(
        "demo-resilient-fallback", "resilient", AgentRunInput("Summarize our Q3 churn drivers.")
    ),
    DemoRun(
        "demo-parallel-analysis",
        "parallel",
        AgentRunInput("Should we launch a self-serve plan for teams of up to 10 people?"),
    ),
    DemoRun(
        "demo-orchestrator",
        "orchestrator",
        AgentRunInput(
            "Customer on the Team plan was double-charged and their sync has failed since Monday."
        ),
    ),
    DemoRun(
        "demo-conversation-open",
        "conversation",
        ConversationInput(prompt="Hi! I'm planning a three-day trip to Lisbon in May."),
    ),
]


async def connect(attempts: int = 30) -> Client:
    connect_config = ClientConfig.load_client_connect_config()
    connect_config.setdefault("target_host", "localhost:7233")
    converter = DataConverter(payload_converter_class=OpenAIPayloadConverter)
    for attempt in range(1, attempts + 1):
        try:
            return await Client.connect(**connect_config, data_converter=converter)
        except RuntimeError:
            if attempt == attempts:
                raise
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


async def seed(client: Client, task_queue: str) -> list[str]:
    """Start the demo runs that do not exist yet; return the ids of those started."""
    started: list[str] = []
    for run in DEMO_RUNS:
        try:
            handle = await client.start_workflow(
                run.workflow,
                run.input,
                id=run.workflow_id,
                task_queue=task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            continue
        started.append(run.workflow_id)
        if run.workflow_id == "demo-approval-approved":
            await handle.signal(
                "approve", Decision(comment="Go ahead, launch is Monday.", by="seed")
            )
        elif run.workflow == "conversation":
            await handle.start_update(
                "send_message",
                "What should I pack, and which neighbourhood should I stay in?",
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                rpc_timeout=timedelta(seconds=10),
            )
    return started


async def main() -> int:
    config = WorkerConfig.from_env()
    client = await connect()
    started = await seed(client, config.task_queue)
    if started:
        print(f"seeded {len(started)} demo runs: {', '.join(started)}")
    else:
        print("demo runs already seeded")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

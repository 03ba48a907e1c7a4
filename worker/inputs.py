"""Workflow inputs and results: one dataclass each, as Temporal payloads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class AgentRunInput:
    """Input of the triage, resilient and parallel workflows.

    ``faults`` are fault specs (see :mod:`worker.faults`); for the resilient
    workflow ``None`` means its default, a primary model that is down.
    """

    prompt: str
    faults: list[str] | None = None


@dataclass
class AgentRunResult:
    output: str
    answered_by: str
    agents: list[str] = field(default_factory=list)
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class ApprovalInput:
    prompt: str
    timeout_seconds: float = 24 * 3600
    faults: list[str] | None = None


@dataclass
class Decision:
    """The payload of the approval workflow's ``approve`` and ``reject`` signals."""

    comment: str = ""
    by: str = ""


@dataclass
class ApprovalResult:
    outcome: str  # approved | rejected | expired
    draft: str
    comment: str
    decided_by: str
    output: str


@dataclass
class ApprovalStatus:
    state: str  # drafting | waiting | approved | rejected | expired | done
    draft: str


@dataclass
class ChatMessage:
    role: str  # user | assistant
    content: str
    agent: str = ""


@dataclass
class ConversationInput:
    prompt: str = ""
    history: list[ChatMessage] = field(default_factory=list)
    max_turns_per_run: int = 50
    faults: list[str] | None = None


@dataclass
class ConversationResult:
    turns: int
    history: list[ChatMessage]


# The workflow that runs one model call again (a replay from the dashboard).
REPLAY_WORKFLOW = "replay_model_call"


@dataclass
class ReplayInput:
    """One model call to run again through the worker's model provider.

    ``model_input`` is what ``invoke_model_activity`` takes (temporalio's
    ``ActivityModelInput`` as JSON: model name, system instructions, input
    items, model settings, tools, handoffs, ...), edited by the operator.
    """

    model_input: dict[str, Any]
    timeout_seconds: float = 120.0
    # The task queue the model activity runs on (a worker's LOOMVIEW_MODEL_TASK_QUEUE);
    # None: the replay workflow's own queue.
    activity_task_queue: str | None = None


@dataclass
class SpecialistInput:
    """Input of the specialist workflow, which the orchestrator runs as a child.

    ``fail_attempts``: the child's first K runs fail after their agent answered
    (a workflow failure, which the parent's retry policy retries as a new run).
    """

    prompt: str
    specialist: str = "technical"  # billing | technical
    faults: list[str] | None = None
    fail_attempts: int = 0


@dataclass
class ChildOutcome:
    """What one child workflow of the orchestrator reported (its last run's result)."""

    workflow_id: str
    specialist: str
    output: str
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class OrchestratorResult:
    """The orchestrator's own answer and figures (its own model calls: the lead
    agent, the reviewer it uses as a tool, the editor), and each child's."""

    output: str
    answered_by: str
    agents: list[str] = field(default_factory=list)
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    children: list[ChildOutcome] = field(default_factory=list)


# Each bundled workflow type a user starts, and the dataclass its run takes.
INPUT_TYPES: dict[str, type[AgentRunInput | ApprovalInput | ConversationInput]] = {
    "triage": AgentRunInput,
    "approval": ApprovalInput,
    "resilient": AgentRunInput,
    "parallel": AgentRunInput,
    "conversation": ConversationInput,
    "orchestrator": AgentRunInput,
}


def input_for(
    workflow_type: str, prompt: str, faults: list[str] | None
) -> AgentRunInput | ApprovalInput | ConversationInput:
    """The input of a new run of a bundled workflow, from a prompt and fault specs."""
    return INPUT_TYPES[workflow_type](prompt=prompt, faults=faults)

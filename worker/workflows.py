"""The bundled agent workflows: the Temporal + Agents SDK patterns users run.

Every ``Runner.run`` inside these workflows executes its model calls as
``invoke_model_activity`` activities through ``OpenAIAgentsPlugin``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from agents import (
        Agent,
        AgentsException,
        InputGuardrailTripwireTriggered,
        ModelSettings,
        RunConfig,
        Runner,
        custom_span,
        trace,
    )
    from agents.result import RunResult
    from temporalio.openai_agents import AgentsWorkflowError

    from worker import agents
    from worker.faults import FAULTS_METADATA_KEY, FaultSpecError, encode_faults, parse_faults
    from worker.inputs import (
        AgentRunInput,
        AgentRunResult,
        ApprovalInput,
        ApprovalResult,
        ApprovalStatus,
        ChatMessage,
        ChildOutcome,
        ConversationInput,
        ConversationResult,
        Decision,
        OrchestratorResult,
        SpecialistInput,
    )
    from worker.replay import ReplayModelCallWorkflow

RESILIENT_DEFAULT_FAULTS = ["call=1:permanent"]
_MODEL_FAILURES = (ActivityError, AgentsWorkflowError, AgentsException)


def bad_input(message: str) -> ApplicationError:
    """A non-retryable error that fails the workflow at once and says what is wrong."""
    return ApplicationError(message, type="InvalidInput", non_retryable=True)


def validated_run_config(
    prompt: str, faults: list[str] | None, *, prompt_required: bool = True
) -> RunConfig:
    """Check a run's input and build the RunConfig that carries its faults to the model."""
    if prompt_required and not prompt.strip():
        raise bad_input("the prompt is empty: give the agent something to do")
    try:
        parsed = parse_faults(faults or [])
    except FaultSpecError as error:
        raise bad_input(f"bad fault spec: {error}") from None
    metadata = {FAULTS_METADATA_KEY: encode_faults(parsed)} if parsed else None
    return RunConfig(
        model_settings=ModelSettings(metadata=metadata),
        trace_include_sensitive_data=True,
    )


def summarize(
    results: list[RunResult], answered_by: str, output: str, notes: list[str] | None = None
) -> AgentRunResult:
    names: list[str] = []
    calls = input_tokens = output_tokens = 0
    for result in results:
        usage = result.context_wrapper.usage
        calls += usage.requests
        input_tokens += usage.input_tokens
        output_tokens += usage.output_tokens
        for item in result.new_items:
            name = getattr(getattr(item, "agent", None), "name", None)
            if name and name not in names:
                names.append(name)
    return AgentRunResult(
        output=output,
        answered_by=answered_by,
        agents=names,
        model_calls=calls,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        notes=notes or [],
    )


@workflow.defn(name="triage")
class TriageWorkflow:
    """A triage agent hands the request off to the specialist who can resolve it."""

    @workflow.run
    async def run(self, input: AgentRunInput) -> AgentRunResult:
        run_config = validated_run_config(input.prompt, input.faults)
        info = workflow.info()
        with (
            trace("Customer support triage", group_id=info.workflow_id),
            custom_span("triage request", data={"prompt_chars": len(input.prompt)}),
        ):
            try:
                result = await Runner.run(
                    agents.triage_agents(), input.prompt, run_config=run_config
                )
            except InputGuardrailTripwireTriggered as blocked:
                name = blocked.guardrail_result.guardrail.get_name()
                return AgentRunResult(
                    output=f"Blocked before any model call: {name}.",
                    answered_by="guardrail",
                    notes=[f"guardrail tripped: {name}"],
                )
        return summarize([result], result.last_agent.name, str(result.final_output))


@workflow.defn(name="approval")
class ApprovalWorkflow:
    """An agent drafts an action; a human approves or rejects it by signal."""

    def __init__(self) -> None:
        self._decision: tuple[str, Decision] | None = None
        self._state = "drafting"
        self._draft = ""

    @workflow.run
    async def run(self, input: ApprovalInput) -> ApprovalResult:
        run_config = validated_run_config(input.prompt, input.faults)
        if input.timeout_seconds <= 0:
            raise bad_input("timeout_seconds must be positive")
        info = workflow.info()
        with trace("Change approval", group_id=info.workflow_id):
            drafted = await Runner.run(agents.drafting_agent(), input.prompt, run_config=run_config)
            self._draft = str(drafted.final_output)
            self._state = "waiting"
            try:
                await workflow.wait_condition(
                    lambda: self._decision is not None,
                    timeout=timedelta(seconds=input.timeout_seconds),
                )
            except TimeoutError:
                self._state = "expired"
                return ApprovalResult(
                    "expired", self._draft, "", "", "No decision in time; nothing was done."
                )
            assert self._decision is not None
            outcome, decision = self._decision
            self._state = outcome
            if outcome == "rejected":
                return ApprovalResult(
                    outcome,
                    self._draft,
                    decision.comment,
                    decision.by,
                    "Rejected; nothing was done.",
                )
            with custom_span("execute approved action", data={"approved_by": decision.by}):
                executed = await Runner.run(
                    agents.executor_agent(),
                    f"Approved action: {self._draft}\nApprover's comment: {decision.comment}",
                    run_config=run_config,
                )
        self._state = "done"
        return ApprovalResult(
            outcome, self._draft, decision.comment, decision.by, str(executed.final_output)
        )

    @workflow.signal
    def approve(self, decision: Decision) -> None:
        if self._decision is None:
            self._decision = ("approved", decision)

    @workflow.signal
    def reject(self, decision: Decision) -> None:
        if self._decision is None:
            self._decision = ("rejected", decision)

    @workflow.query
    def status(self) -> ApprovalStatus:
        return ApprovalStatus(state=self._state, draft=self._draft)


@workflow.defn(name="resilient")
class ResilientWorkflow:
    """The primary agent's model fails through all retries; a fallback agent answers."""

    @workflow.run
    async def run(self, input: AgentRunInput) -> AgentRunResult:
        faults = RESILIENT_DEFAULT_FAULTS if input.faults is None else input.faults
        run_config = validated_run_config(input.prompt, faults)
        info = workflow.info()
        with trace("Resilient answer", group_id=info.workflow_id):
            try:
                primary = await Runner.run(
                    agents.primary_agent(), input.prompt, run_config=run_config
                )
                return summarize([primary], primary.last_agent.name, str(primary.final_output))
            except _MODEL_FAILURES as error:
                reason = f"primary model failed after retries: {_root_message(error)}"
                workflow.logger.warning(reason)
            with custom_span("fallback", data={"reason": reason}):
                fallback = await Runner.run(
                    agents.fallback_agent(), input.prompt, run_config=run_config
                )
        return summarize([fallback], fallback.last_agent.name, str(fallback.final_output), [reason])


def _root_message(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error)


@workflow.defn(name="parallel")
class ParallelWorkflow:
    """Several analysts run concurrently, then an editor merges their answers."""

    @workflow.run
    async def run(self, input: AgentRunInput) -> AgentRunResult:
        run_config = validated_run_config(input.prompt, input.faults)
        info = workflow.info()
        with trace("Parallel analysis", group_id=info.workflow_id):
            analysts = agents.parallel_agents()
            with custom_span("fan out", data={"analysts": [a.name for a in analysts]}):
                results = await asyncio.gather(
                    *(Runner.run(agent, input.prompt, run_config=run_config) for agent in analysts)
                )
            findings = "\n".join(
                f"- {agent.name}: {result.final_output}"
                for agent, result in zip(analysts, results, strict=True)
            )
            merged = await Runner.run(
                agents.merging_agent(),
                f"Proposal: {input.prompt}\nFindings:\n{findings}",
                run_config=run_config,
            )
        return summarize([*results, merged], merged.last_agent.name, str(merged.final_output))


@workflow.defn(name="conversation")
class ConversationWorkflow:
    """A long-lived chat: messages by signal or update, history by query, ends on ``end``."""

    @workflow.init
    def __init__(self, input: ConversationInput) -> None:
        # Set up from the input before any handler runs: an update may arrive
        # in the same first workflow task as the start, and must queue behind
        # the opening prompt.
        self._history: list[ChatMessage] = list(input.history)
        self._pending: list[str] = [input.prompt] if input.prompt.strip() else []
        self._replies: dict[int, str] = {}
        self._received = len(self._pending)
        self._ended = False

    @workflow.run
    async def run(self, input: ConversationInput) -> ConversationResult:
        run_config = validated_run_config(input.prompt, input.faults, prompt_required=False)
        agent = agents.chat_agent()
        turns = 0
        answered = 0
        while True:
            await workflow.wait_condition(lambda: bool(self._pending) or self._ended)
            if not self._pending and self._ended:
                break
            message = self._pending.pop(0)
            answered += 1
            await self._answer(agent, run_config, message, answered)
            turns += 1
            if turns >= input.max_turns_per_run and not self._pending and not self._ended:
                # Keep the event history bounded: carry the conversation into a new run.
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    ConversationInput(
                        history=self._history,
                        max_turns_per_run=input.max_turns_per_run,
                        faults=input.faults,
                    )
                )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ConversationResult(turns=turns, history=self._history)

    async def _answer(self, agent: Agent, run_config: RunConfig, message: str, number: int) -> None:
        self._history.append(ChatMessage(role="user", content=message))
        conversation: list[Any] = [{"role": m.role, "content": m.content} for m in self._history]
        with trace("Conversation turn", group_id=workflow.info().workflow_id):
            result = await Runner.run(agent, conversation, run_config=run_config)
        reply = str(result.final_output)
        self._history.append(
            ChatMessage(role="assistant", content=reply, agent=result.last_agent.name)
        )
        self._replies[number] = reply

    @workflow.signal
    def user_message(self, text: str) -> None:
        if text.strip() and not self._ended:
            self._pending.append(text)
            self._received += 1

    @workflow.update
    async def send_message(self, text: str) -> str:
        self._pending.append(text)
        self._received += 1
        number = self._received
        await workflow.wait_condition(lambda: number in self._replies)
        return self._replies[number]

    @send_message.validator
    def validate_send_message(self, text: str) -> None:
        if not text.strip():
            raise ValueError("the message is empty")
        if self._ended:
            raise ValueError("the conversation has ended")

    @workflow.signal
    def end(self) -> None:
        self._ended = True

    @workflow.query
    def history(self) -> list[ChatMessage]:
        return self._history


# Children of the orchestrator: a run that fails is retried as a new run.
CHILD_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500), backoff_coefficient=1.0, maximum_attempts=3
)


@workflow.defn(name="specialist")
class SpecialistWorkflow:
    """One specialist agent as a workflow of its own: the orchestrator's child."""

    @workflow.run
    async def run(self, input: SpecialistInput) -> AgentRunResult:
        run_config = validated_run_config(input.prompt, input.faults)
        if input.specialist not in ("billing", "technical"):
            raise bad_input(f"unknown specialist {input.specialist!r}: billing or technical")
        # No trace() here: the run joins its parent's Agents SDK trace (from the header).
        result = await Runner.run(
            agents.specialist_agent(input.specialist), input.prompt, run_config=run_config
        )
        attempt = workflow.info().attempt
        if attempt <= input.fail_attempts:
            # After the agent answered: the failed run made model calls of its own.
            raise ApplicationError(
                f"Injected child failure on attempt {attempt} of {input.specialist}",
                type="InjectedChildFault",
            )
        return summarize([result], result.last_agent.name, str(result.final_output))


@workflow.defn(name="orchestrator")
class OrchestratorWorkflow:
    """A lead agent plans (asking a Reviewer agent used as a tool), two specialists run as
    child workflows in parallel (the technical one fails once and is retried), and a
    summarizer merges their answers."""

    @workflow.run
    async def run(self, input: AgentRunInput) -> OrchestratorResult:
        run_config = validated_run_config(input.prompt, input.faults)
        info = workflow.info()
        with trace("Orchestrated support case", group_id=info.workflow_id):
            plan = await Runner.run(agents.lead_agent(), input.prompt, run_config=run_config)
            with custom_span("specialists", data={"children": 2}):
                children = await asyncio.gather(
                    *(
                        workflow.execute_child_workflow(
                            SpecialistWorkflow.run,
                            SpecialistInput(
                                prompt=input.prompt,
                                specialist=specialist,
                                fail_attempts=1 if specialist == "technical" else 0,
                            ),
                            id=f"{info.workflow_id}-{specialist}",
                            retry_policy=CHILD_RETRY,
                        )
                        for specialist in ("billing", "technical")
                    )
                )
            answers = "\n".join(f"- {c.answered_by}: {c.output}" for c in children)
            merged = await Runner.run(
                agents.summary_agent(),
                f"Request: {input.prompt}\nPlan: {plan.final_output}\nSpecialists:\n{answers}",
                run_config=run_config,
            )
        own = summarize([plan, merged], merged.last_agent.name, str(merged.final_output))
        return OrchestratorResult(
            output=own.output,
            answered_by=own.answered_by,
            agents=own.agents,
            model_calls=own.model_calls,
            input_tokens=own.input_tokens,
            output_tokens=own.output_tokens,
            children=[
                ChildOutcome(
                    workflow_id=f"{info.workflow_id}-{specialist}",
                    specialist=specialist,
                    output=child.output,
                    model_calls=child.model_calls,
                    input_tokens=child.input_tokens,
                    output_tokens=child.output_tokens,
                )
                for specialist, child in zip(("billing", "technical"), children, strict=True)
            ],
        )


WORKFLOWS = [
    TriageWorkflow,
    ApprovalWorkflow,
    ResilientWorkflow,
    ParallelWorkflow,
    ConversationWorkflow,
    ReplayModelCallWorkflow,
    OrchestratorWorkflow,
    SpecialistWorkflow,
]

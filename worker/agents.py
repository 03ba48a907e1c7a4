"""The agents of the bundled workflows. Built per run inside the workflow."""

from __future__ import annotations

from datetime import timedelta

from agents import Agent
from temporalio.openai_agents import workflow as agents_workflow

from worker import tools


def billing_agent() -> Agent:
    return Agent(
        name="Billing specialist",
        handoff_description="Handles invoices, charges, payments and refund requests.",
        instructions=(
            "You are the Billing specialist. Look up the customer's invoice, check the "
            "refund policy, and tell them exactly what happens next."
        ),
        tools=[tools.lookup_invoice, tools.refund_policy],
    )


def support_agent() -> Agent:
    return Agent(
        name="Technical support",
        handoff_description="Handles outages, errors, sync problems, bugs and technical questions.",
        instructions=(
            "You are the Technical support engineer. Check the live service status, search "
            "the knowledge base, and give the customer concrete steps."
        ),
        tools=[
            agents_workflow.activity_as_tool(
                tools.check_service_status, start_to_close_timeout=timedelta(seconds=30)
            ),
            tools.search_knowledge_base,
        ],
    )


def triage_agents() -> Agent:
    billing, support = billing_agent(), support_agent()
    return Agent(
        name="Triage agent",
        instructions=(
            "You are the Triage agent. You work the customer support desk: read the request "
            "and hand it off to the one specialist who can resolve it."
        ),
        handoffs=[billing, support],
        input_guardrails=[tools.no_secrets_guardrail],
    )


def drafting_agent() -> Agent:
    return Agent(
        name="Operations drafter",
        instructions=(
            "You are the Operations drafter. Estimate the effort of the requested change and "
            "draft the exact action to take, for a human to approve."
        ),
        tools=[tools.estimate_effort],
    )


def executor_agent() -> Agent:
    return Agent(
        name="Operations executor",
        instructions=(
            "You are the Operations executor. Carry out the approved action, taking the "
            "approver's comment into account, and report what was done."
        ),
    )


def primary_agent() -> Agent:
    return Agent(
        name="Primary analyst",
        instructions="You are the Primary analyst. Answer the question thoroughly.",
    )


def fallback_agent() -> Agent:
    return Agent(
        name="Fallback analyst",
        instructions=(
            "You are the Fallback analyst, used when the primary model is unavailable. "
            "Answer the question briefly and reliably."
        ),
    )


PARALLEL_ROLES = (
    ("Market analyst", "market size, demand and competitors"),
    ("Risk analyst", "risks, compliance and failure modes"),
    ("Engineering analyst", "engineering effort and architecture"),
)


def parallel_agents() -> list[Agent]:
    return [
        Agent(
            name=name,
            instructions=f"You are the {name}. Assess the proposal with a focus on {focus}.",
        )
        for name, focus in PARALLEL_ROLES
    ]


def merging_agent() -> Agent:
    return Agent(
        name="Editor",
        instructions=(
            "You are the Editor. Merge the analysts' findings into one recommendation, "
            "noting where they disagree."
        ),
    )


def chat_agent() -> Agent:
    return Agent(
        name="Concierge",
        instructions=(
            "You are the Concierge, a helpful assistant in a long-running chat. Use the whole "
            "conversation so far to answer the latest message."
        ),
    )


def lead_agent() -> Agent:
    """The orchestrator's lead: plans the work, asking the Reviewer (an agent used as a tool)."""
    reviewer = Agent(
        name="Reviewer",
        instructions=(
            "You are the Reviewer. Check the plan you are given for gaps and risks and say "
            "what to change, in two sentences."
        ),
    )
    return Agent(
        name="Lead planner",
        instructions=(
            "You are the Lead planner. Plan how the billing and technical specialists will "
            "handle the customer's request; have the Reviewer check the plan first."
        ),
        tools=[
            reviewer.as_tool(
                tool_name="ask_reviewer",
                tool_description="Ask the Reviewer agent to check a plan for gaps and risks.",
            )
        ],
    )


def specialist_agent(specialist: str) -> Agent:
    return billing_agent() if specialist == "billing" else support_agent()


def summary_agent() -> Agent:
    return Agent(
        name="Case summarizer",
        instructions=(
            "You are the Case summarizer. Merge the plan and the specialists' answers into one "
            "reply to the customer."
        ),
    )

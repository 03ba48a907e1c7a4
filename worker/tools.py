"""Tools the bundled agents use.

Function tools run inside the workflow, so they must be deterministic: they only
compute from their arguments. They are ``async``: the Agents SDK runs a sync tool in
a thread, which a workflow's event loop does not allow. Anything that touches the
outside world is a Temporal activity, offered to the agent through ``activity_as_tool``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from agents import Agent, GuardrailFunctionOutput, RunContextWrapper, function_tool, input_guardrail
from temporalio import activity


def _stable_number(seed: str, low: int, high: int) -> int:
    digest = int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16)
    return low + digest % (high - low + 1)


@function_tool
async def lookup_invoice(invoice_id: str) -> str:
    """Look up an invoice by its id and return its amount and state."""
    amount = _stable_number(invoice_id, 19, 480)
    return f"invoice {invoice_id}: ${amount}.00, paid on card ending 4242, refundable"


@function_tool
async def refund_policy(reason: str) -> str:
    """Return the refund policy that applies to a customer's reason."""
    days = 30 if "damaged" in reason.lower() else 14
    return f"refunds are allowed within {days} days of purchase for this reason"


@function_tool
async def search_knowledge_base(query: str) -> str:
    """Search the support knowledge base for articles matching the query."""
    article = _stable_number(query, 100, 999)
    return f"KB-{article}: 'Resetting a stuck sync' matches the question"


@function_tool
async def estimate_effort(task: str) -> str:
    """Estimate how many engineer-hours a task takes."""
    return f"about {_stable_number(task, 2, 16)} engineer-hours"


@dataclass
class ServiceStatusRequest:
    service: str


@activity.defn
async def check_service_status(request: ServiceStatusRequest) -> str:
    """Check the live status of a service (a Temporal activity, so it may do I/O)."""
    latency = _stable_number(request.service, 40, 180)
    return f"service {request.service[:60]!r} is degraded in eu-west-1, p95 latency {latency} ms"


_SECRET = re.compile(r"\b(sk-[A-Za-z0-9_\-]{16,}|AKIA[A-Z0-9]{16}|gh[pousr]_[A-Za-z0-9]{30,})")


def _text_of(input: str | list[Any]) -> str:
    if isinstance(input, str):
        return input
    return " ".join(str(item.get("content", "")) for item in input if isinstance(item, dict))


@input_guardrail(name="No secrets in the request", run_in_parallel=False)
async def no_secrets_guardrail(
    context: RunContextWrapper[Any], agent: Agent[Any], input: str | list[Any]
) -> GuardrailFunctionOutput:
    """Stop a request that carries a credential before any model sees it."""
    found = _SECRET.findall(_text_of(input))
    return GuardrailFunctionOutput(
        output_info={"credentials_found": len(found)}, tripwire_triggered=bool(found)
    )

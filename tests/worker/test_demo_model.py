import json
from typing import Any

from agents import Handoff, ModelResponse
from agents.tool import FunctionTool
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage

from worker import tools
from worker.demo_model import DemoModel, estimate_tokens


def _handoff(agent_name: str, description: str) -> Handoff:
    async def invoke(context: object, args: str) -> object:
        raise AssertionError("not invoked by the model")

    return Handoff(
        tool_name=f"transfer_to_{agent_name.lower().replace(' ', '_')}",
        tool_description=description,
        input_json_schema={},
        on_invoke_handoff=invoke,  # type: ignore[arg-type]
        agent_name=agent_name,
    )


HANDOFFS = [
    _handoff("Billing specialist", "Handles invoices, charges, payments and refund requests."),
    _handoff("Technical support", "Handles outages, errors, sync problems and bugs."),
]


def _only(response: ModelResponse) -> object:
    assert len(response.output) == 1
    return response.output[0]


def test_hands_off_to_the_specialist_the_prompt_is_about() -> None:
    model = DemoModel(latency_ms=0)
    billing = _only(model.respond("You are the Triage agent.", "Refund my invoice", [], HANDOFFS))
    support = _only(
        model.respond("You are the Triage agent.", "The sync shows errors", [], HANDOFFS)
    )
    assert isinstance(billing, ResponseFunctionToolCall)
    assert billing.name == "transfer_to_billing_specialist"
    assert isinstance(support, ResponseFunctionToolCall)
    assert support.name == "transfer_to_technical_support"


def test_calls_each_tool_once_then_answers_from_their_results() -> None:
    model = DemoModel(latency_ms=0)
    instructions = "You are the Billing specialist. Help."
    toolset: list[FunctionTool] = [tools.lookup_invoice, tools.refund_policy]
    items: list[Any] = [{"role": "user", "content": "Refund invoice INV-2231 please"}]

    first = _only(model.respond(instructions, items, list(toolset), []))
    assert isinstance(first, ResponseFunctionToolCall)
    assert first.name == "lookup_invoice"
    assert json.loads(first.arguments) == {"invoice_id": "INV-2231"}
    items += [
        {"type": "function_call", "name": first.name, "call_id": first.call_id, "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": first.call_id,
            "output": "invoice INV-2231: $42.00",
        },
    ]
    second = _only(model.respond(instructions, items, list(toolset), []))
    assert isinstance(second, ResponseFunctionToolCall)
    assert second.name == "refund_policy"
    items += [
        {
            "type": "function_call",
            "name": second.name,
            "call_id": second.call_id,
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": second.call_id, "output": "14 days"},
    ]
    final = _only(model.respond(instructions, items, list(toolset), []))
    assert isinstance(final, ResponseOutputMessage)
    text = final.content[0].text  # type: ignore[union-attr]
    assert text.startswith("Billing specialist here.")
    assert "lookup_invoice → invoice INV-2231: $42.00" in text and "14 days" in text


def test_nested_dataclass_arguments_follow_the_schema() -> None:
    from temporalio.openai_agents.workflow import activity_as_tool

    tool = activity_as_tool(tools.check_service_status)
    assert isinstance(tool, FunctionTool)
    call = _only(DemoModel(latency_ms=0).respond("You are the X.", "sync is broken", [tool], []))
    assert isinstance(call, ResponseFunctionToolCall)
    assert json.loads(call.arguments) == {"request": {"service": "sync is broken"}}


def test_same_input_same_output_and_realistic_usage() -> None:
    model = DemoModel(latency_ms=0)
    a = model.respond("You are the Editor.", "Merge these findings", [], [])
    b = model.respond("You are the Editor.", "Merge these findings", [], [])
    assert a.output == b.output and a.response_id == b.response_id
    assert a.usage.requests == 1
    assert a.usage.input_tokens >= estimate_tokens("You are the Editor.Merge these findings")
    assert a.usage.output_tokens > 0
    assert a.usage.total_tokens == a.usage.input_tokens + a.usage.output_tokens

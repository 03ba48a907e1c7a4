"""The offline demo model: a deterministic scripted model that plays real agent turns.

It reads what the Agents SDK sends a real model (instructions, conversation items,
tool and handoff definitions) and answers the way a well-behaved model would: hand
off when it can and has not yet, call each of its tools once with arguments built
from the conversation, then give a final answer built from the tool results. Same
input, same output, so runs are reproducible; token usage is estimated from the
text the way a tokenizer would roughly count it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from agents import (
    AgentOutputSchemaBase,
    Handoff,
    Model,
    ModelResponse,
    ModelSettings,
    ModelTracing,
    Tool,
    TResponseInputItem,
    Usage,
)
from agents.items import TResponseStreamEvent
from agents.tool import FunctionTool
from agents.tracing import generation_span
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

DEMO_MODEL_NAME = "loomview-demo-1"
_ID_PATTERN = re.compile(r"\b([A-Z]{2,5}-?\d{2,8}|\d{4,10})\b")
_WORD = re.compile(r"[a-z]{3,}")


def estimate_tokens(text: str) -> int:
    """About four characters a token, as OpenAI's tokenizers average on English."""
    return max(1, (len(text) + 3) // 4)


def _item_get(item: Any, key: str) -> Any:
    if isinstance(item, dict):
        return item.get(key)
    return getattr(item, key, None)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(_item_get(part, "text") or "") for part in content)
    return ""


class Conversation:
    """What the demo model needs to know about the items it was sent."""

    def __init__(self, input: str | list[TResponseInputItem]) -> None:
        self.items: list[Any] = (
            [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        )
        self.user_messages: list[str] = []
        self.called: dict[str, str] = {}  # tool name -> call_id
        self.outputs: dict[str, str] = {}  # call_id -> output
        for item in self.items:
            kind = _item_get(item, "type")
            role = _item_get(item, "role")
            if kind == "function_call":
                self.called[str(_item_get(item, "name"))] = str(_item_get(item, "call_id"))
            elif kind == "function_call_output":
                self.outputs[str(_item_get(item, "call_id"))] = _text_of(_item_get(item, "output"))
            elif role == "user":
                self.user_messages.append(_text_of(_item_get(item, "content")))

    @property
    def last_user_message(self) -> str:
        return self.user_messages[-1] if self.user_messages else ""

    def output_of(self, tool_name: str) -> str | None:
        call_id = self.called.get(tool_name)
        return None if call_id is None else self.outputs.get(call_id)

    def text(self) -> str:
        return json.dumps(self.items, default=str)


def _score(prompt: str, description: str) -> int:
    words = set(_WORD.findall(prompt.lower()))
    return sum(1 for word in _WORD.findall(description.lower()) if word in words)


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _resolve(defs.get(ref.removeprefix("#/$defs/"), {}), defs)
    return schema


def _argument_for(name: str, schema: dict[str, Any], prompt: str, defs: dict[str, Any]) -> Any:
    schema = _resolve(schema, defs)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {
            key: _argument_for(key, sub, prompt, defs)
            for key, sub in schema.get("properties", {}).items()
        }
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "integer":
        return 3 if "limit" in name or "count" in name else 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if kind == "array":
        return [_argument_for(name, schema.get("items", {"type": "string"}), prompt, defs)]
    lowered = name.lower()
    if lowered.endswith("id") or lowered.endswith("number"):
        found = _ID_PATTERN.search(prompt)
        return found.group(1) if found else "A-1042"
    if "email" in lowered:
        return "customer@example.com"
    return " ".join(prompt.split()[:24]) or "general"


def build_arguments(tool: FunctionTool, prompt: str) -> str:
    schema = tool.params_json_schema or {}
    return json.dumps(_argument_for(tool.name, schema, prompt, schema.get("$defs", {})))


def _persona(system_instructions: str | None) -> str:
    """The agent's name as its instructions introduce it ("You are the X ...")."""
    match = re.search(r"You are (?:the |an? )?([A-Z][^.,;:]{0,60})", system_instructions or "")
    return match.group(1) if match else "Assistant"


_CLOSINGS = (
    "Next step: I have noted this on the ticket and will follow up within one business day.",
    "Recommendation: go ahead as outlined; the risk is low and reversible.",
    "Recommendation: proceed in two steps and confirm after the first one.",
    "Let me know if anything here does not match what you see.",
)


def _final_answer(persona: str, conversation: Conversation, tool_names: list[str]) -> str:
    lines = [line.strip() for line in conversation.last_user_message.strip().splitlines()]
    request, context = (lines[0] if lines else ""), [line for line in lines[1:] if line]
    findings = [
        f"{name} → {conversation.output_of(name)}"
        for name in tool_names
        if conversation.output_of(name) is not None
    ]
    digest = hashlib.sha256(conversation.text().encode()).digest()
    parts = [f"{persona} here. About “{request[:200]}”:"]
    if context:
        parts.append("Taking into account " + " ".join(line[:160] for line in context[:12]))
    if findings:
        parts.append("I checked " + "; ".join(findings) + ".")
    if len(conversation.user_messages) > 1:
        parts.append(f"(This is message {len(conversation.user_messages)} of our conversation.)")
    parts.append(_CLOSINGS[digest[0] % len(_CLOSINGS)])
    return " ".join(parts)


def _message(text: str, response_id: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=f"msg_{response_id}",
        content=[ResponseOutputText(text=text, annotations=[], type="output_text")],
        role="assistant",
        status="completed",
        type="message",
    )


class DemoModel(Model):
    """Scripted, offline, deterministic stand-in for an LLM with realistic turns."""

    def __init__(self, model_name: str = DEMO_MODEL_NAME, latency_ms: int = 200) -> None:
        self.model_name = model_name
        self.latency_ms = latency_ms

    def respond(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> ModelResponse:
        conversation = Conversation(input)
        prompt = conversation.last_user_message
        response_id = hashlib.sha256(
            f"{system_instructions}\n{conversation.text()}".encode()
        ).hexdigest()[:16]
        handoff_names = {h.tool_name for h in handoffs}
        output: Any
        if handoffs and not handoff_names & set(conversation.called):
            best = max(
                handoffs, key=lambda h: _score(prompt, f"{h.agent_name} {h.tool_description}")
            )
            output = ResponseFunctionToolCall(
                arguments="{}",
                call_id=f"call_{response_id}",
                name=best.tool_name,
                type="function_call",
                id=f"fc_{response_id}",
                status="completed",
            )
        else:
            function_tools = [t for t in tools if isinstance(t, FunctionTool)]
            pending = [t for t in function_tools if t.name not in conversation.called]
            if pending:
                tool = pending[0]
                output = ResponseFunctionToolCall(
                    arguments=build_arguments(tool, prompt),
                    call_id=f"call_{response_id}",
                    name=tool.name,
                    type="function_call",
                    id=f"fc_{response_id}",
                    status="completed",
                )
            else:
                text = _final_answer(
                    _persona(system_instructions), conversation, [t.name for t in function_tools]
                )
                output = _message(text, response_id)
        input_tokens = estimate_tokens((system_instructions or "") + conversation.text())
        input_tokens += sum(estimate_tokens(json.dumps(_tool_schema(t))) for t in tools)
        output_tokens = estimate_tokens(output.model_dump_json())
        usage = Usage(
            requests=1,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )
        return ModelResponse(output=[output], usage=usage, response_id=f"resp_{response_id}")

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
        # Like the SDK's own chat-completions model, record the call as a generation span.
        with generation_span(
            model=self.model_name,
            model_config=model_settings.to_json_dict(),
            input=[{"role": "system", "content": system_instructions or ""}, *_as_items(input)],
            disabled=tracing.is_disabled(),
        ) as span:
            if self.latency_ms:
                await asyncio.sleep(self.latency_ms / 1000)
            response = self.respond(system_instructions, input, tools, handoffs)
            if tracing.include_data():
                span.span_data.output = [
                    item.model_dump(exclude_none=True) for item in response.output
                ]
            else:
                span.span_data.input = None
            span.span_data.usage = {
                "input_tokens": response.usage.input_tokens,
                "output_tokens": response.usage.output_tokens,
            }
            return response

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
        raise NotImplementedError("the demo model does not stream; use Runner.run")


def _as_items(input: str | list[TResponseInputItem]) -> list[Any]:
    return [{"role": "user", "content": input}] if isinstance(input, str) else list(input)


def _tool_schema(tool: Tool) -> dict[str, Any]:
    if isinstance(tool, FunctionTool):
        return {"name": tool.name, "parameters": tool.params_json_schema}
    return {"name": getattr(tool, "name", type(tool).__name__)}

"""The one vocabulary: every attribute name, alias, span kind and Temporal constant.

The worker writes these names, the receiver reads them, the store indexes
them, the correlation joins on them and the exporters write them again; all of
them import them from here, and nothing else spells them (as
``opentelemetry-semantic-conventions`` is the one home of the OTel names).

Families, each a section below:

- ours (``temporal.*``): what the bundled worker writes on every span;
- Temporal's ``TracingInterceptor`` / ``OpenTelemetryPlugin`` (``temporalWorkflowID``, ...);
- the OTel GenAI semantic conventions (``gen_ai.*``);
- OpenInference (``openinference.span.kind``, ``llm.*``, ``input.value``, ...);
- the Agents SDK's own span data (``agents.*``), as the bridge writes it;
- ``temporalio.openai_agents``' own OTel mode (``temporal:*`` spans, the
  ``__openai_span`` header) and OpenLLMetry (``traceloop.*``).

Pure Python: no Django, so the worker can import it.
"""

from __future__ import annotations

import hashlib

from temporalio.api.enums.v1 import EventType

# -- ours: temporal.* -----------------------------------------------------------
WORKFLOW_ID = "temporal.workflow.id"
RUN_ID = "temporal.run.id"
WORKFLOW_TYPE = "temporal.workflow.type"
NAMESPACE = "temporal.namespace"
TASK_QUEUE = "temporal.task_queue"
ACTIVITY_ID = "temporal.activity.id"
ACTIVITY_TYPE = "temporal.activity.type"
ACTIVITY_ATTEMPT = "temporal.activity.attempt"
UPDATE_ID = "temporal.update.id"
# A child run's parent, and the run a run continued (continue-as-new, retry, cron):
# on the bundled worker's workflow-side spans, so ingest learns a run's family.
PARENT_WORKFLOW_ID = "temporal.parent.workflow.id"
PARENT_RUN_ID = "temporal.parent.run.id"
CONTINUED_RUN_ID = "temporal.continued.run.id"

# -- Temporal's TracingInterceptor / OpenTelemetryPlugin -------------------------
# Their attribute names → ours.
TEMPORAL_ALIASES: dict[str, str] = {
    "temporalWorkflowID": WORKFLOW_ID,
    "temporalRunID": RUN_ID,
    "temporalActivityID": ACTIVITY_ID,
    "temporalActivityType": ACTIVITY_TYPE,
    "temporalUpdateID": UPDATE_ID,
}
# Every spelling of one meaning, ours first: the first one found wins.
WORKFLOW_ID_KEYS = (WORKFLOW_ID, "temporalWorkflowID")
RUN_ID_KEYS = (RUN_ID, "temporalRunID")
ACTIVITY_ID_KEYS = (ACTIVITY_ID, "temporalActivityID")
# Span name prefixes of temporalio.contrib.opentelemetry, e.g.
# "RunActivity:invoke_model_activity".
TEMPORAL_SPAN_PREFIXES = frozenset(
    {
        "StartWorkflow",
        "SignalWithStartWorkflow",
        "RunWorkflow",
        "CompleteWorkflow",
        "StartActivity",
        "RunActivity",
        "StartChildWorkflow",
        "SignalChildWorkflow",
        "SignalExternalWorkflow",
        "SignalWorkflow",
        "QueryWorkflow",
        "StartWorkflowUpdate",
        "StartUpdateWithStartWorkflow",
        "HandleSignal",
        "HandleQuery",
        "HandleUpdate",
        "ValidateUpdate",
        "StartNexusOperation",
        "RunStartNexusOperationHandler",
        "RunCancelNexusOperationHandler",
    }
)
# Spans whose name ends in the workflow type: "RunWorkflow:triage".
WORKFLOW_SPAN_PREFIXES = ("RunWorkflow", "StartWorkflow", "SignalWithStartWorkflow")
RUN_ACTIVITY_PREFIX = "RunActivity:"
HANDLE_SIGNAL = "HandleSignal"
HANDLE_UPDATE = "HandleUpdate"
HANDLER_SPAN_PREFIXES = (HANDLE_SIGNAL, HANDLE_UPDATE)
# Temporal's built-in queries (__stack_trace, __temporal_workflow_metadata):
# how tools look at a run, not what the run did.
TOOLING_QUERY_PREFIX = "HandleQuery:__"

# -- the model activity of temporalio.openai_agents --------------------------------
MODEL_ACTIVITY_TYPE = "invoke_model_activity"

# -- temporalio.openai_agents' OpenAIAgentsPlugin ------------------------------------
# The header it writes on every workflow start, signal, update and scheduled
# activity: the Agents SDK trace and span ids and, in its OTel mode
# (use_otel_instrumentation=True), the OTel trace and span ids current then
# (integers), e.g. the span id of the ``temporal:startActivity`` span.
OPENAI_HEADER = "__openai_span"
OPENAI_HEADER_OTEL_TRACE = "otelTraceId"
OPENAI_HEADER_OTEL_SPAN = "otelSpanId"
# Its custom spans (add_temporal_spans=True): "temporal:startActivity",
# "temporal:executeActivity" (one per attempt), "temporal:executeWorkflow", ...
NATIVE_SPAN_PREFIX = "temporal:"
NATIVE_START_ACTIVITY = "temporal:startActivity"
NATIVE_EXECUTE_ACTIVITY = "temporal:executeActivity"
# temporalio.contrib.opentelemetry's header: a W3C trace context carrier.
OTEL_TRACER_HEADER = "_tracer-data"
TRACEPARENT = "traceparent"

# -- OTel GenAI semantic conventions ----------------------------------------------
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_AGENT = "gen_ai.agent.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_RESULT = "gen_ai.tool.call.result"
GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_CONVERSATION = "gen_ai.conversation.id"
GEN_AI_HANDOFF_FROM = "gen_ai.handoff.from_agent"
GEN_AI_HANDOFF_TO = "gen_ai.handoff.to_agent"
ERROR_TYPE = "error.type"
SERVICE_NAME = "service.name"

# -- OpenInference -------------------------------------------------------------
OI_SPAN_KIND = "openinference.span.kind"
OI_MODEL = "llm.model_name"
OI_PROMPT_TOKENS = "llm.token_count.prompt"
OI_COMPLETION_TOKENS = "llm.token_count.completion"
OI_TOTAL_TOKENS = "llm.token_count.total"
OI_INPUT_MESSAGES = "llm.input_messages"
OI_OUTPUT_MESSAGES = "llm.output_messages"
OI_INVOCATION_PARAMETERS = "llm.invocation_parameters"
OI_INPUT = "input.value"
OI_INPUT_MIME = "input.mime_type"
OI_OUTPUT = "output.value"
OI_OUTPUT_MIME = "output.mime_type"
OI_TOOL_NAME = "tool.name"
OI_GRAPH_NODE = "graph.node.id"
OI_AGENT_NAME = "agent.name"
OI_SESSION = "session.id"
OI_LLM_PROVIDER = "llm.provider"
OI_LLM_SYSTEM = "llm.system"
# Phoenix files spans into projects by this resource attribute, or this header.
OI_PROJECT = "openinference.project.name"
PROJECT_HEADER = "x-project-name"
# OpenInference names a handoff TOOL span "handoff to <agent>", the agent it
# hands off from in input.value and the one it hands off to in output.value.
OI_HANDOFF_PREFIX = "handoff to "

# -- OpenLLMetry (traceloop's opentelemetry-instrumentation-openai-agents) -------------
TRACELOOP_SPAN_KIND = "traceloop.span.kind"

# -- the Agents SDK's span data, as telemetry.agents_bridge writes it ---------------
AGENTS_SPAN_TYPE = "agents.span.type"
AGENTS_AGENT = "agents.agent.name"
AGENTS_TRACE_ID = "agents.trace_id"
AGENTS_SPAN_ID = "agents.span_id"
AGENTS_PARENT_ID = "agents.parent_id"
AGENTS_HANDOFF_FROM = "agents.handoff.from"
AGENTS_HANDOFF_TO = "agents.handoff.to"
AGENTS_AGENT_TOOLS = "agents.agent.tools"
AGENTS_AGENT_HANDOFFS = "agents.agent.handoffs"
AGENTS_AGENT_OUTPUT_TYPE = "agents.agent.output_type"
AGENTS_FUNCTION_MCP_DATA = "agents.function.mcp_data"
AGENTS_GUARDRAIL_NAME = "agents.guardrail.name"
AGENTS_GUARDRAIL_TRIGGERED = "agents.guardrail.triggered"
AGENTS_MCP_SERVER = "agents.mcp.server"
AGENTS_MCP_TOOLS = "agents.mcp.tools"
AGENTS_CUSTOM_NAME = "agents.custom.name"
AGENTS_CUSTOM_DATA = "agents.custom.data"
AGENTS_DATA = "agents.data"
AGENTS_ERROR_DATA = "agents.error.data"
AGENTS_TRACE_NAME = "agents.trace.name"
AGENTS_TRACE_GROUP_ID = "agents.trace.group_id"
AGENTS_TRACE_METADATA = "agents.trace.metadata"
AGENTS_CUSTOM_PREFIX = "agents.custom."
# True on a bridged span the worker also sent to OpenAI's Traces dashboard
# (LOOMVIEW_OPENAI_TRACES), where its trace is agents.trace_id.
AGENTS_OPENAI_TRACES = "agents.openai_traces"

# -- what a meaning is read from, first found wins ------------------------------------
MODEL_KEYS = (GEN_AI_REQUEST_MODEL, GEN_AI_RESPONSE_MODEL, OI_MODEL)
AGENT_KEYS = (GEN_AI_AGENT, AGENTS_AGENT, OI_GRAPH_NODE, OI_AGENT_NAME)
# The agent that made a model call, on the model span.
CALLING_AGENT_KEYS = (GEN_AI_AGENT, AGENTS_AGENT)
# What instrumentations write when they do not know the agent: the GenAI
# contrib instrumentation's default, OpenLLMetry's.
PLACEHOLDER_AGENT_NAMES = frozenset({"OpenAI Agent", "unknown_agent"})
HANDOFF_FROM_KEYS = (AGENTS_HANDOFF_FROM, GEN_AI_HANDOFF_FROM)
HANDOFF_TO_KEYS = (AGENTS_HANDOFF_TO, GEN_AI_HANDOFF_TO)
PROVIDER_KEYS = (GEN_AI_PROVIDER, GEN_AI_SYSTEM, OI_LLM_PROVIDER, OI_LLM_SYSTEM)
# A model span that names no provider: the Agents SDK speaks the OpenAI API.
DEFAULT_PROVIDER = "openai"
TOOL_KEYS = (GEN_AI_TOOL_NAME, OI_TOOL_NAME)
INPUT_TOKEN_KEYS = (GEN_AI_INPUT_TOKENS, OI_PROMPT_TOKENS)
OUTPUT_TOKEN_KEYS = (GEN_AI_OUTPUT_TOKENS, OI_COMPLETION_TOKENS)
INPUT_MESSAGE_KEYS = (GEN_AI_INPUT_MESSAGES, OI_INPUT)
OUTPUT_MESSAGE_KEYS = (GEN_AI_OUTPUT_MESSAGES, OI_OUTPUT)

# -- normalized span kinds (the store's Span.kind) ------------------------------------
# The Agents SDK's span types plus Temporal's own spans. "task" is a Runner.run
# and "turn" one turn of its agent loop (Agents SDK 0.20+).
KINDS = frozenset(
    {
        "agent",
        "generation",
        "response",
        "function",
        "handoff",
        "guardrail",
        "custom",
        "trace",
        "mcp_tools",
        "task",
        "turn",
        "temporal",
        "other",
    }
)
MODEL_KINDS = frozenset({"generation", "response"})
OPENINFERENCE_KINDS = {
    "LLM": "generation",
    "TOOL": "function",
    "AGENT": "agent",
    "CHAIN": "custom",
    "GUARDRAIL": "guardrail",
}
GEN_AI_OPERATIONS = {
    "chat": "generation",
    "text_completion": "generation",
    "generate_content": "generation",
    "execute_tool": "function",
    "invoke_agent": "agent",
    "create_agent": "agent",
    # Not (yet) in the semantic conventions: OpenLLMetry's and the contrib
    # instrumentation's names for a handoff.
    "handoff": "handoff",
    "agent_handoff": "handoff",
}
TRACELOOP_KINDS = {
    "workflow": "trace",
    "agent": "agent",
    "tool": "function",
    "handoff": "handoff",
    "task": "custom",
}
# What a stored span is sent as: normalized kind → (OpenInference span kind,
# GenAI operation name). Every span gets a kind, Temporal's own included.
EXPORT_KINDS: dict[str, tuple[str, str | None]] = {
    "agent": ("AGENT", "invoke_agent"),
    "generation": ("LLM", "chat"),
    "response": ("LLM", "chat"),
    "function": ("TOOL", "execute_tool"),
    "handoff": ("TOOL", None),
    "mcp_tools": ("TOOL", None),
    "guardrail": ("GUARDRAIL", None),
}
EXPORT_DEFAULT_KIND = ("CHAIN", None)
# Agents SDK span type → (OpenInference span kind, GenAI operation name).
AGENTS_SPAN_KINDS: dict[str, tuple[str, str | None]] = {
    "trace": ("CHAIN", None),
    "agent": ("AGENT", "invoke_agent"),
    "generation": ("LLM", "chat"),
    "response": ("LLM", "chat"),
    "function": ("TOOL", "execute_tool"),
    "handoff": ("TOOL", None),
    "guardrail": ("GUARDRAIL", None),
    "custom": ("CHAIN", None),
    "mcp_tools": ("TOOL", None),
    "task": ("CHAIN", None),
    "turn": ("CHAIN", None),
}

# -- OTLP status codes -------------------------------------------------------------
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2

# -- Temporal history ------------------------------------------------------------------
# An activity's close event type → its outcome.
ACTIVITY_CLOSE_OUTCOMES: dict[int, str] = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "completed",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "failed",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "timed_out",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "canceled",
}
FAILED_OUTCOMES = frozenset({"failed", "timed_out"})
WORKFLOW_CLOSE_EVENT_TYPES = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    }
)

# Runs stopped from outside: their workflow code never finished, so the spans it had
# open (the RunWorkflow span, an agent mid-turn) are never ended, hence never sent.
WORKFLOW_STOPPED_EVENT_TYPES = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
    }
)


def run_digest(workflow_id: str, run_id: str) -> str:
    """A stable, fixed-length key for one run: cache keys and group names hold any id."""
    return hashlib.sha256(f"{workflow_id}\0{run_id}".encode()).hexdigest()


def is_model_activity_span(name: str) -> bool:
    """Temporal's StartActivity/RunActivity span of a model call."""
    return name.endswith(":" + MODEL_ACTIVITY_TYPE)

"""Replaying one model call: what it was sent, the editor's checks, and what came back.

The exact model input of a call is in its run's history: the
``ActivityTaskScheduled`` event of its ``invoke_model_activity`` carries
temporalio's ``ActivityModelInput`` (model name, system instructions, input
items, model settings, tools, handoffs, ...), and the close event carries the
model's answer. Without a history (Temporal's retention), the generation span's
messages and settings are the fallback; tools and handoffs are then unknown.

A replay sends the edited input to the ``replay_model_call`` workflow on the
bundled worker's task queue (worker.replay), which runs the worker's own model
activity once: the worker's model provider and credentials, never the original
run. The dashboard starts it through dashboard.temporal and reads the answer
back from the replay run's history.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from dashboard import diffs, run_page, temporal
from dashboard.models import Replay
from telemetry import vocab
from telemetry.redact import REDACTED, is_secret_name, redact_text
from tracing.correlation import correlate, event_ns
from worker.faults import FAULTS_METADATA_KEY
from worker.inputs import INPUT_TYPES, REPLAY_WORKFLOW, ReplayInput

# A replay that nobody picks up (no worker on the queue) fails after this long.
REPLAY_TIMEOUT = timedelta(minutes=5)
MODEL_TIMEOUT_SECONDS = 120.0
MAX_INPUT_CHARS = 512 * 1024
MAX_SYSTEM_CHARS = 64 * 1024
MODEL_NAME = re.compile(r"^[\w.\-:/@+]{1,200}$")
# Settings a replay never sends: they carry credentials or reach other endpoints,
# and the worker holds those.
WITHHELD_SETTINGS = ("extra_headers", "extra_query", "extra_body", "extra_args")
_STARTED = int(EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)
_COMPLETED = int(EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
_SCHEDULED = int(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)


class InvalidReplay(ValueError):
    """An edit that must not reach the worker; ``field`` names the form field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class CallSource:
    """One model call as it was: where it came from, what it was sent, what it said."""

    workflow_id: str
    run_id: str
    activity_id: str
    number: int
    agent: str
    span_id: str
    source: str  # history | spans
    model_input: dict[str, Any]
    model: str
    system: str
    input: Any
    settings: dict[str, Any]
    output: Any
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: float | None
    task_queue: str
    workflow_type: str
    tools: list[str] = field(default_factory=list)
    handoffs: list[str] = field(default_factory=list)
    # Where the call's model activity ran, when not on the run's own task queue.
    activity_task_queue: str = ""


def _decoded(message: Any) -> Any:
    return run_page.decode_payloads(run_page.to_json(message))


def clean_settings(raw: Any) -> dict[str, Any]:
    """Model settings as the editor shows them: no fault injection, nothing withheld, redacted."""
    settings_in = dict(raw) if isinstance(raw, dict) else {}
    metadata = settings_in.get("metadata")
    if isinstance(metadata, dict) and FAULTS_METADATA_KEY in metadata:
        metadata = {k: v for k, v in metadata.items() if k != FAULTS_METADATA_KEY}
        settings_in["metadata"] = metadata or None
    for key in WITHHELD_SETTINGS:
        settings_in.pop(key, None)
    return redacted(settings_in)


def redacted(value: Any) -> Any:
    """A copy with credential-looking values (and secret-named keys' values) replaced."""
    if isinstance(value, dict):
        return {
            k: REDACTED if is_secret_name(str(k)) and v not in (None, "") else redacted(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redacted(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def _from_history(events: Sequence[HistoryEvent], activity_id: str) -> dict[str, Any] | None:
    number = 0
    for event in events:
        if event.event_type != _SCHEDULED:
            continue
        attrs = event.activity_task_scheduled_event_attributes
        if attrs.activity_type.name != vocab.MODEL_ACTIVITY_TYPE:
            continue
        number += 1
        if attrs.activity_id != activity_id:
            continue
        model_input = _decoded(attrs.input) if attrs.HasField("input") else None
        found: dict[str, Any] = {
            "number": number,
            "task_queue": attrs.task_queue.name,
            "model_input": model_input if isinstance(model_input, dict) else {},
            "output": None,
            "usage": {},
            "latency_ms": None,
        }
        started_ns = None
        for later in events:
            if later.event_type == _STARTED and (
                later.activity_task_started_event_attributes.scheduled_event_id == event.event_id
            ):
                started_ns = event_ns(later)
            elif later.event_type == _COMPLETED and (
                later.activity_task_completed_event_attributes.scheduled_event_id == event.event_id
            ):
                completed = later.activity_task_completed_event_attributes
                response = _decoded(completed.result) if completed.HasField("result") else None
                if isinstance(response, dict):
                    found["output"] = response.get("output")
                    found["usage"] = response.get("usage") or {}
                if started_ns is not None:
                    found["latency_ms"] = (event_ns(later) - started_ns) / 1e6
        return found
    return None


def _names(items: Any, key: str) -> list[str]:
    return [str(i.get(key, "")) for i in items or [] if isinstance(i, dict) and i.get(key)]


async def load_call(workflow_id: str, run_id: str, activity_id: str) -> CallSource | None:
    """The model call ``activity_id`` of a run, from its history, else from its spans."""
    loaded = await run_page.load(workflow_id, run_id)
    story = await sync_to_async(correlate)(loaded.events, loaded.spans)
    call = next((c for c in story.model_calls if c.activity_id == activity_id), None)
    header = run_page.header_from_history(loaded.events)
    found = _from_history(loaded.events, activity_id) if loaded.events else None
    if found is None and call is None:
        return None
    if found is not None and found["model_input"]:
        model_input = found["model_input"]
        usage = found["usage"]
        return CallSource(
            workflow_id=workflow_id,
            run_id=run_id,
            activity_id=activity_id,
            number=found["number"],
            agent=call.agent if call else "",
            span_id=call.model_span_id if call else "",
            source="history",
            model_input=model_input,
            model=str(model_input.get("model_name") or (call.model if call else "") or ""),
            system=str(model_input.get("system_instructions") or ""),
            input=model_input.get("input"),
            settings=clean_settings(model_input.get("model_settings")),
            output=found["output"],
            tokens_in=usage.get("input_tokens"),
            tokens_out=usage.get("output_tokens"),
            latency_ms=found["latency_ms"],
            task_queue=header.task_queue,
            workflow_type=header.workflow_type,
            tools=_names(model_input.get("tools"), "name"),
            handoffs=_names(model_input.get("handoffs"), "agent_name"),
            activity_task_queue=(
                found["task_queue"] if found["task_queue"] != header.task_queue else ""
            ),
        )
    assert call is not None
    # Spans only: the generation's messages, the system prompt first among them.
    messages = diffs.parse(call.input)
    system = ""
    first = messages[0] if isinstance(messages, list) and messages else None
    if isinstance(first, dict) and first.get("role") in ("system", "developer"):
        system = str(first.get("content") or "")
        messages = messages[1:]
    span = next((s for s in loaded.spans if s["span_id"] == call.model_span_id), None)
    attrs = span["attributes"] if span else {}
    return CallSource(
        workflow_id=workflow_id,
        run_id=run_id,
        activity_id=activity_id,
        number=call.number,
        agent=call.agent,
        span_id=call.model_span_id,
        source="spans",
        model_input={},
        model=call.model,
        system=system,
        input=messages,
        settings=clean_settings(diffs.parse(attrs.get(vocab.OI_INVOCATION_PARAMETERS))),
        output=diffs.parse(call.output),
        tokens_in=call.tokens_in,
        tokens_out=call.tokens_out,
        latency_ms=None,
        task_queue=header.task_queue or str(attrs.get(vocab.TASK_QUEUE, "")),
        workflow_type=header.workflow_type or str(attrs.get(vocab.WORKFLOW_TYPE, "")),
    )


def default_task_queue(source: CallSource) -> str:
    """The queue of the worker that ran the call if it is the bundled worker, else Loomview's."""
    if source.workflow_type in INPUT_TYPES and source.task_queue:
        return source.task_queue
    return str(settings.LOOMVIEW_TASK_QUEUE)


def initial(source: CallSource) -> dict[str, str]:
    """The editor's fields, filled with the call as it was sent."""
    return {
        "model": source.model,
        "system": redact_text(source.system),
        "input": run_page.pretty(redacted(source.input)),
        "settings": run_page.pretty(source.settings),
        "task_queue": default_task_queue(source),
    }


@dataclass
class Edits:
    model: str
    system: str
    input: Any
    settings: dict[str, Any]
    task_queue: str


def _json_field(name: str, raw: str, limit: int) -> Any:
    if len(raw) > limit:
        raise InvalidReplay(name, f"over {limit // 1024} KiB")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidReplay(
            name, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def check(values: dict[str, str]) -> Edits:
    """The editor's fields, checked whole before anything reaches Temporal."""
    model = values.get("model", "").strip()
    if model and not MODEL_NAME.match(model):
        raise InvalidReplay("model", "a model name is letters, digits and . - _ : / @ +")
    system = values.get("system", "")
    if len(system) > MAX_SYSTEM_CHARS:
        raise InvalidReplay("system", f"over {MAX_SYSTEM_CHARS // 1024} KiB")
    messages = _json_field("input", values.get("input", ""), MAX_INPUT_CHARS)
    if isinstance(messages, str):
        if not messages.strip():
            raise InvalidReplay("input", "the input is empty")
    elif not isinstance(messages, list) or not messages:
        raise InvalidReplay("input", "the input is a JSON list of messages (or one string)")
    elif not all(isinstance(m, dict) for m in messages):
        raise InvalidReplay("input", "every message is a JSON object")
    model_settings = _json_field("settings", values.get("settings", "") or "{}", MAX_INPUT_CHARS)
    if not isinstance(model_settings, dict):
        raise InvalidReplay("settings", "the model settings are a JSON object")
    check_settings(model_settings)
    task_queue = values.get("task_queue", "").strip()
    if not task_queue or len(task_queue) > 200:
        raise InvalidReplay("task_queue", "name the task queue the bundled worker polls")
    return Edits(model, system, messages, model_settings, task_queue)


def check_settings(model_settings: dict[str, Any]) -> None:
    from agents import ModelSettings

    known = {f.name for f in dataclasses.fields(ModelSettings)}
    unknown = sorted(set(model_settings) - known)
    if unknown:
        raise InvalidReplay("settings", f"not a model setting: {', '.join(unknown)}")
    withheld = [k for k in WITHHELD_SETTINGS if model_settings.get(k) not in (None, {}, [])]
    if withheld:
        raise InvalidReplay(
            "settings",
            f"{', '.join(withheld)} cannot be replayed: the worker holds the credentials",
        )
    if REDACTED in json.dumps(model_settings):
        raise InvalidReplay("settings", f"replace {REDACTED} with a value, or remove it")
    try:
        ModelSettings(**model_settings)
    except Exception as exc:  # pydantic's ValidationError: the message is for the form
        raise InvalidReplay("settings", str(exc).splitlines()[0][:300]) from None


def model_input(source: CallSource, edits: Edits) -> dict[str, Any]:
    """What the replay's model activity is sent: the original input with the edits applied."""
    base = copy.deepcopy(source.model_input) if source.source == "history" else {}
    base.setdefault("tools", [])
    base.setdefault("handoffs", [])
    base.setdefault("output_schema", None)
    base.update(
        {
            "model_name": edits.model or None,
            "system_instructions": edits.system or None,
            "input": edits.input,
            "model_settings": edits.settings,
            # With data: the replay's own generation span shows what was sent.
            "tracing": 1,
            # Server-side state of the original conversation is not the replay's.
            "previous_response_id": None,
            "conversation_id": None,
        }
    )
    return base


def edited_fields(source: CallSource, edits: Edits) -> list[str]:
    original = initial(source)
    fields = []
    if edits.model != original["model"]:
        fields.append("model")
    if edits.system != original["system"]:
        fields.append("system instructions")
    if edits.input != json.loads(original["input"]):
        fields.append("input messages")
    if edits.settings != json.loads(original["settings"]):
        fields.append("model settings")
    return fields


async def start(
    identity: str, username: str, user: Any, source: CallSource, edits: Edits
) -> Replay:
    """Record the replay and start it on the worker; raises ActionFailed/TemporalUnavailable."""
    replay = await Replay.objects.acreate(
        user=user,
        username=username,
        workflow_id=source.workflow_id,
        run_id=source.run_id,
        activity_id=source.activity_id,
        call_number=source.number,
        agent=source.agent,
        span_id=source.span_id,
        source=source.source,
        original_model=source.model,
        original_system=redact_text(source.system),
        original_input=redacted(source.input),
        original_settings=source.settings,
        original_output=redacted(source.output),
        original_tokens_in=source.tokens_in,
        original_tokens_out=source.tokens_out,
        original_latency_ms=source.latency_ms,
        model=edits.model,
        system=edits.system,
        input=edits.input,
        model_settings=edits.settings,
        task_queue=edits.task_queue,
        replay_workflow_id=f"replay-{uuid.uuid4().hex[:12]}",
    )
    # The same deployment as the call's run: its model activity runs where the call's did.
    same_workers = edits.task_queue == source.task_queue and source.activity_task_queue
    arg = ReplayInput(
        model_input(source, edits),
        MODEL_TIMEOUT_SECONDS,
        activity_task_queue=source.activity_task_queue if same_workers else None,
    )
    try:
        replay.replay_run_id = await temporal.start_run(
            identity,
            REPLAY_WORKFLOW,
            [arg],
            replay.replay_workflow_id,
            edits.task_queue,
            execution_timeout=REPLAY_TIMEOUT,
        )
    except (temporal.ActionFailed, temporal.TemporalUnavailable) as exc:
        replay.status = Replay.Status.FAILED
        replay.error = f"not started: {exc}"
        replay.finished = datetime.now(UTC)
        await replay.asave()
        raise
    await replay.asave(update_fields=["replay_run_id"])
    return replay


def _result(events: Sequence[HistoryEvent]) -> tuple[Any, str, float | None]:
    """The replay run's answer (the model response), its failure, and the model's latency."""
    latency = None
    started = None
    for event in events:
        if event.event_type == _STARTED:
            started = event_ns(event)
        elif event.event_type == _COMPLETED and started is not None:
            latency = (event_ns(event) - started) / 1e6
    header = run_page.header_from_history(events)
    return header.result, header.failure, latency


async def refresh(replay: Replay) -> Replay:
    """A pending replay brought up to date from its run's history (once it has closed)."""
    if not replay.is_pending or not replay.replay_run_id:
        return replay
    try:
        history = await run_page.load_history(replay.replay_workflow_id, replay.replay_run_id)
    except temporal.TemporalUnavailable:
        return replay
    if history is None or not history.events:
        return replay
    header = run_page.header_from_history(history.events)
    if header.is_open:
        return replay
    response, failure, latency = _result(history.events)
    replay.latency_ms = latency
    replay.finished = datetime.now(UTC)
    if header.status == "COMPLETED" and isinstance(response, dict):
        usage = response.get("usage") or {}
        replay.status = Replay.Status.COMPLETED
        replay.output = redacted(response.get("output"))
        replay.tokens_in = usage.get("input_tokens")
        replay.tokens_out = usage.get("output_tokens")
    else:
        replay.status = Replay.Status.FAILED
        replay.error = redact_text(failure or f"the replay run ended {header.status.lower()}")
    await replay.asave()
    return replay


def for_run(workflow_id: str, run_id: str) -> list[Replay]:
    return list(Replay.objects.filter(workflow_id=workflow_id, run_id=run_id)[:50])


# -- showing a replay --------------------------------------------------------------


def cost(model: str, tokens_in: int | None, tokens_out: int | None) -> Decimal | None:
    return run_page.cost_of(model, tokens_in, tokens_out)


@dataclass
class Column:
    """One side of a replay page: the original call, or a replay."""

    title: str
    model: str
    tokens_in: int | None
    tokens_out: int | None
    cost: Decimal | None
    latency_ms: float | None
    output: list[diffs.Message] | None
    system: str
    input: list[diffs.Message] | None
    settings: dict[str, Any]
    url: str = ""


def original_column(replay: Replay) -> Column:
    model = replay.original_model or "(worker default)"
    return Column(
        title="Original",
        model=model,
        tokens_in=replay.original_tokens_in,
        tokens_out=replay.original_tokens_out,
        cost=cost(replay.original_model, replay.original_tokens_in, replay.original_tokens_out),
        latency_ms=replay.original_latency_ms,
        output=diffs.messages(replay.original_output),
        system=replay.original_system,
        input=diffs.messages(replay.original_input),
        settings=replay.original_settings or {},
    )


def replay_column(replay: Replay, title: str = "") -> Column:
    model = replay.response_model or replay.model or replay.original_model
    return Column(
        title=title or f"Replay {replay.pk}",
        model=replay.model or "(worker default)",
        tokens_in=replay.tokens_in,
        tokens_out=replay.tokens_out,
        cost=cost(model, replay.tokens_in, replay.tokens_out),
        latency_ms=replay.latency_ms,
        output=diffs.messages(replay.output),
        system=replay.system,
        input=diffs.messages(replay.input),
        settings=replay.model_settings or {},
    )


def side_by_side(left: Column, right: Column) -> dict[str, Any]:
    """Two columns and the diffs between them: output, input messages, system, settings."""

    def pairs(a: list[diffs.Message] | None, b: list[diffs.Message] | None) -> list[diffs.Pair]:
        return diffs.message_pairs(a or [], b or [])

    settings_a, settings_b = run_page.pretty(left.settings), run_page.pretty(right.settings)
    return {
        "left": left,
        "right": right,
        "columns": [(left, "a"), (right, "b")],
        "output_pairs": pairs(left.output, right.output),
        "input_pairs": pairs(left.input, right.input),
        "system_diff": (
            diffs.side_by_side(left.system, right.system) if left.system != right.system else None
        ),
        "settings_diff": (
            diffs.side_by_side(settings_a, settings_b) if settings_a != settings_b else None
        ),
        "tokens_in_delta": _delta(left.tokens_in, right.tokens_in),
        "tokens_out_delta": _delta(left.tokens_out, right.tokens_out),
    }


def _delta(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else b - a

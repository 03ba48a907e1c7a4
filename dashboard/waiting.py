"""What an open run waits for: the agent's last output, its timers, pending work, and
the signals and updates the workflow declares, so an operator sees what a decision
is about without running a query.

Read from the run's story (history and spans) and from the workflow's own handler
definitions (one cached metadata query); nothing here changes a run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.core.cache import cache

from dashboard import diffs, temporal
from dashboard.templatetags.runs_format import duration_ns
from telemetry.vocab import run_digest
from tracing.correlation import ModelCall, RunStory
from tracing.models import ns_to_datetime

# A worker answers the metadata query by replaying the run: ask once in a while.
DEFINITIONS_CACHE_OPEN = 30
DEFINITIONS_CACHE = 24 * 3600
# The agent's output shown in full up to this many characters.
MAX_OUTPUT_CHARS = 4000

# Words in a handler's name that say it ends, stops or refuses something: such a
# handler is never the one a form picks first.
_DESTRUCTIVE = frozenset(
    {
        "end", "stop", "cancel", "terminate", "abort", "kill", "quit", "exit", "close",
        "shutdown", "finish", "reject", "deny", "decline", "delete", "remove", "purge",
        "reset", "fail",
    }
)  # fmt: skip
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def is_destructive(name: str) -> bool:
    """Whether a handler's name says it ends or refuses something (``end``, ``rejectDraft``)."""
    return any(word.lower() in _DESTRUCTIVE for word in _WORDS.findall(name))


def safe_first(names: Sequence[str]) -> list[str]:
    """Handler names with the harmless ones first, each group in its own order."""
    return [n for n in names if not is_destructive(n)] + [n for n in names if is_destructive(n)]


async def declared_handlers(
    workflow_id: str, run_id: str, is_open: bool
) -> temporal.Definitions | None:
    """The workflow's handlers, cached: asking means a worker replays the run."""
    key = "loomview:defs:" + run_digest(workflow_id, run_id)
    cached = await cache.aget(key)
    if isinstance(cached, temporal.Definitions):
        return cached
    definitions = await temporal.workflow_definitions(workflow_id, run_id)
    if definitions is not None:
        await cache.aset(key, definitions, DEFINITIONS_CACHE_OPEN if is_open else DEFINITIONS_CACHE)
    return definitions


def answer_text(output: object) -> str:
    """What a model said in words: its messages' text, without tool call requests."""
    parsed = diffs.messages(output)
    if not parsed:
        return ""
    lines: list[str] = []
    for message in parsed:
        if message.role in ("user", "system", "developer", "tool"):
            continue
        text = "\n".join(
            line for line in message.text.splitlines() if not line.startswith("→ ")
        ).strip()
        if text:
            lines.append(text)
    return "\n".join(lines)


@dataclass
class AgentOutput:
    agent: str
    text: str
    number: int
    activity_id: str
    time: datetime | None
    cut: bool = False


def last_output(calls: Sequence[ModelCall]) -> AgentOutput | None:
    """The last thing an agent said in words (a tool request is not an answer)."""
    for call in reversed(calls):
        text = answer_text(call.output)
        if text:
            cut = len(text) > MAX_OUTPUT_CHARS
            return AgentOutput(
                call.agent,
                text[:MAX_OUTPUT_CHARS] + ("…" if cut else ""),
                call.number,
                call.activity_id,
                ns_to_datetime(call.closed_ns),
                cut,
            )
    return None


@dataclass
class Timer:
    timer_id: str
    timeout: str
    fires: datetime | None
    fires_in: str


@dataclass
class Pending:
    activity_type: str
    activity_id: str
    since: datetime | None


@dataclass
class WaitingFor:
    output: AgentOutput | None = None
    # Waiting for a signal or an update (the workflow is idle).
    awaiting_message: bool = False
    since: datetime | None = None
    idle_for: str = ""
    timers: list[Timer] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    # Signals and updates received so far: (kind, name).
    received: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_waiting(self) -> bool:
        return self.awaiting_message or bool(self.timers) or bool(self.pending)


def waiting_for(story: RunStory, now_ns: int | None = None) -> WaitingFor:
    """What an open run is waiting on now, from its story."""
    now = time.time_ns() if now_ns is None else now_ns
    waiting = WaitingFor(output=last_output(story.model_calls))
    for wait in story.waits:
        if wait.end_ns is not None:
            continue
        if wait.kind == "wait":
            waiting.awaiting_message = True
            waiting.since = ns_to_datetime(wait.time_ns)
            if wait.time_ns is not None:
                waiting.idle_for = duration_ns(max(now - wait.time_ns, 0))
        elif wait.kind == "timer" and wait.detail.get("state") == "pending":
            fire_ns = wait.detail.get("fire_ns")
            waiting.timers.append(
                Timer(
                    str(wait.detail.get("timer_id", "")),
                    duration_ns(wait.detail.get("timeout_ns")),
                    ns_to_datetime(fire_ns),
                    duration_ns(max(fire_ns - now, 0)) if isinstance(fire_ns, int) else "",
                )
            )
        elif wait.kind == "pending":
            waiting.pending.append(
                Pending(
                    str(wait.detail.get("activity_type", "")),
                    str(wait.detail.get("activity_id", "")),
                    ns_to_datetime(wait.time_ns),
                )
            )
    waiting.received = [
        (item.kind, item.title)
        for item in story.items
        if item.kind in ("signal", "update") and item.detail.get("state") != "completed"
    ]
    return waiting

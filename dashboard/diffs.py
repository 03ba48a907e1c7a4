"""Messages as people read them, and side-by-side diffs of them, as escaped HTML.

Shared by the compare page (dashboard.compare) and model-call replays
(dashboard.replays). A model's input and output arrive in several shapes: the
bundled worker's chat-like messages (``{"role", "content", "tool_calls"}``),
OpenAI Chat Completions messages, Responses API items, the GenAI semantic
conventions' ``parts`` and plain text. Each message becomes one ``Message``:
its role and a canonical text (tool calls as ``→ name(arguments)``) in which
opaque ids (call ids, response ids) are left out, so two runs that said the
same thing compare equal.

Everything here is sender-controlled text: every piece that reaches HTML goes
through ``html.escape``; only this module's own markup is not escaped. The
HTML is built in Python rather than in templates because a 500-call
comparison renders thousands of diff rows.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from django.utils.safestring import SafeString

# Ids that differ between runs that said the same thing.
_OPAQUE_KEYS = frozenset({"id", "call_id", "tool_call_id", "response_id", "item_id"})
# Longest text diffed in full; beyond it the rest is compared but shown whole.
MAX_DIFF_CHARS = 20_000
# Replaced line pairs longer than this are marked whole instead of word by word.
_INTRALINE_CHARS = 2_000
_LONG_LINE = 160
_SENTENCE = re.compile(r"(?<=[.!?;])\s+")
# Words with the spaces after them: spaces alone would match everywhere and make
# difflib quadratic on repetitive text.
_WORDS = re.compile(r"\S+\s*|\s+")
# Word diffs of line pairs with more word pairs than this mark the lines whole.
_WORD_PAIRS = 200_000


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str

    @property
    def text(self) -> str:
        return f"{self.name}({self.arguments})"


@dataclass
class Message:
    role: str
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.role}\n{self.text}"

    @property
    def preview(self) -> str:
        flat = " ".join(self.text.split())
        return flat if len(flat) <= 140 else flat[:139] + "…"


def parse(value: Any) -> Any:
    """An attribute that may hold JSON text, as a value."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                return json.loads(stripped)
            except ValueError:
                return value
    return value


def _compact(value: Any) -> str:
    """Tool arguments as one line: JSON text re-dumped compactly, anything else as text."""
    parsed = parse(value) if isinstance(value, str) else value
    if isinstance(parsed, (dict, list)):
        return json.dumps(parsed, ensure_ascii=False, separators=(", ", ": "))
    return "" if parsed is None else str(parsed)


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k not in _OPAQUE_KEYS}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text", part.get("content"))
                texts.append(_text_of(text) if text is not None else _json(part))
            else:
                texts.append(str(part))
        return "\n".join(t for t in texts if t)
    if isinstance(content, dict):
        return _json(_without_ids(content))
    return str(content)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def _tool_call(raw: Any) -> ToolCall | None:
    if not isinstance(raw, dict):
        return None
    # Chat Completions nests the call under "function".
    nested = raw.get("function")
    function: dict[str, Any] = nested if isinstance(nested, dict) else raw
    name = function.get("name")
    if not name:
        return None
    return ToolCall(str(name), _compact(function.get("arguments", "")))


def message(raw: Any) -> Message:
    """One input or output item, in whichever shape it came, as a Message."""
    if not isinstance(raw, dict):
        return Message("text", _text_of(raw))
    kind = raw.get("type")
    if kind == "function_call":
        requested = ToolCall(str(raw.get("name", "")), _compact(raw.get("arguments", "")))
        return Message("assistant", f"→ {requested.text}", [requested])
    if kind == "function_call_output":
        return Message("tool", _text_of(raw.get("output")))
    role = str(raw.get("role") or kind or "item")
    lines: list[str] = []
    calls: list[ToolCall] = []
    content = raw.get("content")
    if content not in (None, "", []):
        lines.append(_text_of(content))
    for part in raw.get("parts") or []:
        # GenAI semantic conventions: typed parts.
        if not isinstance(part, dict):
            continue
        if part.get("type") == "tool_call":
            in_part = _tool_call(part)
            if in_part is not None:
                calls.append(in_part)
                lines.append(f"→ {in_part.text}")
        elif part.get("type") == "tool_call_response":
            lines.append(_text_of(part.get("response", part.get("result"))))
        else:
            lines.append(_text_of(part.get("content", part.get("text"))))
    for raw_call in raw.get("tool_calls") or []:
        call = _tool_call(raw_call)
        if call is not None:
            calls.append(call)
            lines.append(f"→ {call.text}")
    if not lines:
        rest = _without_ids({k: v for k, v in raw.items() if k not in ("role", "type")})
        lines.append(_json(rest) if rest else "")
    return Message(role, "\n".join(lines), calls)


def messages(value: Any) -> list[Message] | None:
    """A model call's input or output as Messages; None when nothing was recorded."""
    value = parse(value)
    if value in (None, "", []):
        return None
    if isinstance(value, dict):
        # {"messages": [...]} wrappers, or a single message.
        inner = value.get("messages", value.get("input", value.get("output")))
        value = inner if isinstance(inner, list) else [value]
    if not isinstance(value, list):
        return [Message("text", _text_of(value))]
    return [message(item) for item in value]


def tool_calls(items: Sequence[Message] | None) -> list[ToolCall]:
    return [call for item in items or () for call in item.tool_calls]


# -- diffs -----------------------------------------------------------------------


@dataclass
class Pair:
    """Two aligned things (messages, tool calls): either may be missing."""

    a: Any
    b: Any
    status: str  # same | changed | only_a | only_b
    html: SafeString | None = None  # the side-by-side diff of a changed pair

    @property
    def differs(self) -> bool:
        return self.status != "same"


def align(
    a: Sequence[Any], b: Sequence[Any], key: Any, pair_replaced: bool = True
) -> list[tuple[Any, Any, str]]:
    """Two sequences aligned by ``key``: (a item or None, b item or None, status).

    Equal keys pair as ``same``; a replaced stretch pairs position by position as
    ``changed`` (when ``pair_replaced``); the rest is ``only_a`` / ``only_b``.
    """
    keys_a = [key(x) for x in a]
    keys_b = [key(x) for x in b]
    head = 0
    while head < len(a) and head < len(b) and keys_a[head] == keys_b[head]:
        head += 1
    tail = 0
    while tail < len(a) - head and tail < len(b) - head and keys_a[-1 - tail] == keys_b[-1 - tail]:
        tail += 1
    rows: list[tuple[Any, Any, str]] = [(a[i], b[i], "same") for i in range(head)]
    middle_a, middle_b = keys_a[head : len(a) - tail], keys_b[head : len(b) - tail]
    matcher = difflib.SequenceMatcher(None, middle_a, middle_b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        i1, i2, j1, j2 = i1 + head, i2 + head, j1 + head, j2 + head
        if op == "equal":
            rows.extend((a[i1 + k], b[j1 + k], "same") for k in range(i2 - i1))
            continue
        paired = min(i2 - i1, j2 - j1) if op == "replace" and pair_replaced else 0
        rows.extend((a[i1 + k], b[j1 + k], "changed") for k in range(paired))
        rows.extend((a[i], None, "only_a") for i in range(i1 + paired, i2))
        rows.extend((None, b[j], "only_b") for j in range(j1 + paired, j2))
    rows.extend((a[len(a) - tail + k], b[len(b) - tail + k], "same") for k in range(tail))
    return rows


def message_pairs(a: Sequence[Message], b: Sequence[Message]) -> list[Pair]:
    """Messages aligned by content; changed ones carry their side-by-side diff."""
    pairs = []
    for left, right, status in align(a, b, key=lambda m: m.key):
        pair = Pair(left, right, status)
        if status == "changed":
            pair.html = side_by_side(left.text, right.text)
        pairs.append(pair)
    return pairs


def tool_pairs(a: Sequence[ToolCall], b: Sequence[ToolCall]) -> list[Pair]:
    pairs = []
    for left, right, status in align(a, b, key=lambda c: c.text):
        pair = Pair(left, right, status)
        if status == "changed":
            pair.html = side_by_side(left.text, right.text)
        pairs.append(pair)
    return pairs


def _lines(text: str) -> list[str]:
    """Lines to diff: long prose is cut at sentence ends so a change stays small."""
    out: list[str] = []
    for line in text.splitlines() or [""]:
        if len(line) <= _LONG_LINE:
            out.append(line)
        else:
            out.extend(_SENTENCE.split(line))
    return out


def _cell(kind: str, html: str) -> str:
    return f'<div class="d-cell d-{kind}">{html or "&#8203;"}</div>'


def words_diff(a: str, b: str) -> tuple[str, str]:
    """One replaced line pair with the changed words marked."""
    if len(a) > _INTRALINE_CHARS or len(b) > _INTRALINE_CHARS:
        return f"<del>{escape(a)}</del>", f"<ins>{escape(b)}</ins>"
    words_a, words_b = _WORDS.findall(a), _WORDS.findall(b)
    if len(words_a) * len(words_b) > _WORD_PAIRS:
        return f"<del>{escape(a)}</del>", f"<ins>{escape(b)}</ins>"
    left: list[str] = []
    right: list[str] = []
    matcher = difflib.SequenceMatcher(None, words_a, words_b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        chunk_a, chunk_b = escape("".join(words_a[i1:i2])), escape("".join(words_b[j1:j2]))
        if op == "equal":
            left.append(chunk_a)
            right.append(chunk_b)
            continue
        if chunk_a:
            left.append(f"<del>{chunk_a}</del>")
        if chunk_b:
            right.append(f"<ins>{chunk_b}</ins>")
    return "".join(left), "".join(right)


def side_by_side(a: str, b: str) -> SafeString:
    """Two texts as a two-column line diff: removed left, added right, changed words marked."""
    note = ""
    if len(a) > MAX_DIFF_CHARS or len(b) > MAX_DIFF_CHARS:
        a, b = a[:MAX_DIFF_CHARS], b[:MAX_DIFF_CHARS]
        note = f'<div class="d-note">Only the first {MAX_DIFF_CHARS:,} characters are diffed.</div>'
    lines_a, lines_b = _lines(a), _lines(b)
    rows: list[str] = []
    matcher = difflib.SequenceMatcher(None, lines_a, lines_b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            rows.extend(
                _cell("eq", escape(line)) + _cell("eq", escape(line)) for line in lines_a[i1:i2]
            )
            continue
        paired = min(i2 - i1, j2 - j1) if op == "replace" else 0
        for k in range(paired):
            left, right = words_diff(lines_a[i1 + k], lines_b[j1 + k])
            rows.append(_cell("chg", left) + _cell("chg", right))
        rows.extend(
            _cell("del", f"<del>{escape(line)}</del>") + _cell("none", "")
            for line in lines_a[i1 + paired : i2]
        )
        rows.extend(
            _cell("none", "") + _cell("ins", f"<ins>{escape(line)}</ins>")
            for line in lines_b[j1 + paired : j2]
        )
    return SafeString(f'<div class="diff">{"".join(rows)}</div>{note}')


def escaped_lines(texts: Iterable[str]) -> SafeString:
    return SafeString("<br>".join(escape(t) for t in texts))

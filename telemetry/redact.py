"""Secrets never leave the process: the one set of redaction rules.

The bundled worker applies them to every span before export
(telemetry.otel), the dashboard's receiver to every span it is sent
(tracing.otlp), and the forwarder again on the way out (tracing.encode), so
spans from apps that redact nothing are redacted too.

Two rules: attributes named like secrets (``authorization``, ``api_key``,
``password``, ...) lose their value whatever it is; text that looks like a
credential (OpenAI, AWS, GitHub, Slack and Google keys, bearer and basic
credentials, JWTs) is replaced wherever it appears: attribute values, span and
event names, status messages. Deployments add value patterns of their own
with ``LOOMVIEW_REDACT_PATTERNS`` (a JSON list of regular expressions), read
by the worker and the dashboard alike.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from telemetry.memo import Memo

PATTERNS_ENV = "LOOMVIEW_REDACT_PATTERNS"

REDACTED = "[REDACTED]"

# Attribute names whose values are secrets whatever they look like.
_SECRET_NAME = re.compile(
    r"(authorization|api[_-]?key|apikey|secret|password|passwd|token|cookie|credential)",
    re.IGNORECASE,
)
# Values that look like credentials wherever they appear in text.
_SECRET_VALUE = re.compile(
    r"(?:"
    r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}"  # OpenAI keys
    r"|\bBearer\s+[A-Za-z0-9._~+/\-]{8,}=*"  # bearer tokens
    r"|\bBasic\s+[A-Za-z0-9+/]{8,}=*"
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"  # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}"  # Slack tokens
    r"|\bAIza[0-9A-Za-z_\-]{35}"  # Google API keys
    r"|\beyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"  # JWTs
    r")"
)
# Names that only look secret: token counts are data, not credentials.
_NOT_SECRET_NAME = re.compile(r"(token_count|tokens|token_type|usage)", re.IGNORECASE)


# Every _SECRET_VALUE alternative contains one of these literals, each filed
# under one character it contains. Text without any of the characters (five
# single-character searches, each a memchr over the text) is clear without a
# regex or a longer search: cheap enough for the receiver's and the
# forwarder's hot paths, where most text is long and holds no secret.
_MARKERS_BY_CHAR = (
    ("-", ("sk-", "xox")),
    ("_", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    ("A", ("AKIA", "ASIA", "AIza")),
    ("B", ("Bearer", "Basic")),
    ("J", ("eyJ",)),
)
# No _SECRET_VALUE match is shorter ("Basic " and 8 characters).
_SHORTEST_SECRET = 14


# Configured patterns (LOOMVIEW_REDACT_PATTERNS), one alternation; None: none.
_extra: re.Pattern[str] | None = None
# Text shorter than this is clear; a configured pattern may match anything.
_shortest = _SHORTEST_SECRET


def parse_patterns(text: str) -> list[str]:
    """The patterns of LOOMVIEW_REDACT_PATTERNS: a JSON list of regular expressions."""
    if not text.strip():
        return []
    try:
        patterns = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{PATTERNS_ENV} is not JSON: {exc}") from None
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{PATTERNS_ENV} must be a JSON list of non-empty strings")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            message = f"{PATTERNS_ENV}: {pattern!r} is not a regular expression: {exc}"
            raise ValueError(message) from None
    return patterns


def set_extra_patterns(patterns: Sequence[str]) -> None:
    """Redact text matching any of these too (replacing what was set before)."""
    global _extra, _shortest
    _extra = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
    _shortest = 0 if patterns else _SHORTEST_SECRET
    for cache in _DERIVED:
        cache.clear()


def shortest_secret() -> int:
    """Text shorter than this has nothing to redact (callers on hot paths skip the call)."""
    return _shortest


def redact_text(value: str) -> str:
    if len(value) < _shortest:
        return value
    if len(value) <= _SHORT:
        return _redact_short(value)
    return _redact(value)


# Short values (ids, names, models, queues) repeat on every span of a run.
_SHORT = 160


def _redact(value: str) -> str:
    if _extra is not None:
        value = _extra.sub(REDACTED, value)
    for char, markers in _MARKERS_BY_CHAR:
        if char in value:
            for marker in markers:
                if marker in value:
                    return _SECRET_VALUE.sub(REDACTED, value)
    return value


# Short text → redacted (telemetry.memo): new ids come with every span.
_SHORT_CACHE: Memo[str, str] = Memo(_redact, 8192)
_redact_short = _SHORT_CACHE.__getitem__
# Caches of redacted forms, here and elsewhere (telemetry.wire keeps short
# attributes redacted and encoded): emptied when the rules change.
_DERIVED: list[dict[Any, Any]] = [_SHORT_CACHE]


def derived_cache(cache: dict[Any, Any]) -> dict[Any, Any]:
    """Register ``cache`` (of values redacted by these rules) to be emptied when they change."""
    _DERIVED.append(cache)
    return cache


# For hot loops that do redact_text's dispatch themselves (tracing.otlp's
# attributes): text of at least shortest_secret() characters and at most
# SHORT_TEXT goes to redact_short (cached), longer text to redact_long.
SHORT_TEXT = _SHORT
redact_short = _redact_short
redact_long = _redact


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET_NAME.search(name)


def may_name_secret(text: str) -> bool:
    """Whether ``text`` (JSON, say) holds anything named like a secret: when not,
    redacting the value it was made from by name changes nothing."""
    lower = text.lower()
    return any(marker in lower for marker in _NAME_MARKERS)


# Each _SECRET_NAME alternative contains one of these (substring searches: far
# cheaper than the case-insensitive regex, which has no literal to look for).
_NAME_MARKERS = ("authorization", "api", "secret", "passw", "token", "cookie", "credential")


def redact_value(value: Any) -> Any:
    # The usual JSON types first, by exact type: in a workflow's sandbox every
    # isinstance() (against an ABC above all) is a chain of Python calls.
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind is dict:
        return {
            key: REDACTED if is_secret_name(str(key)) else redact_value(item)
            for key, item in value.items()
        }
    if kind is list:
        return [redact_value(item) for item in value]
    if kind in _PLAIN_TYPES:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED if is_secret_name(str(key)) else redact_value(item)
            for key, item in value.items()
        }
    if isinstance(value, tuple):
        return tuple(redact_value(item) for item in value)
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [redact_value(item) for item in value]
    return value


_PLAIN = (int, float, bool, type(None))
_PLAIN_TYPES = frozenset(_PLAIN)


def secret_changes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Only the attributes that redaction changes, with their redacted values.

    Most spans carry no secret: callers keep (and do not copy) their attributes
    when this is empty, which is what keeps redaction cheap on the worker.
    """
    changes: dict[str, Any] = {}
    if not attributes:
        return changes
    # A long text that is the value of several attributes (a model call's
    # messages, in the GenAI and the OpenInference names) is searched once.
    seen: dict[int, str] = {}
    shortest, short = _shortest, _SHORT_CACHE
    for key, value in attributes.items():
        if is_secret_name(key):
            if value != REDACTED:
                changes[key] = REDACTED
            continue
        kind = type(value)
        if kind is str:
            # redact_text, inlined: this runs for every attribute of every span.
            size = len(value)
            if size < shortest:
                continue
            if size <= _SHORT:
                clean = short[value]
            else:
                # The attributes hold every value while this runs: ids are not reused.
                clean = seen.get(id(value)) or seen.setdefault(id(value), _redact(value))
            if clean is not value and clean != value:
                changes[key] = clean
        elif kind not in _PLAIN:
            clean = redact_value(value)
            if clean != value:
                changes[key] = clean
    return changes


def redact_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of the attributes with secrets replaced."""
    if not attributes:
        return {}
    changes = secret_changes(attributes)
    return {**attributes, **changes} if changes else dict(attributes)

"""Secrets never leave the process: redaction of span attributes before export."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

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


# Every _SECRET_VALUE alternative contains one of these literals; checking
# them first (a fast substring search) skips the regex for ordinary text, which
# keeps redaction cheap enough for the forwarder's hot path.
_MARKERS = ("sk-", "Bearer", "Basic", "AKIA", "ASIA", "hp_", "ho_", "hu_", "hs_", "hr_",
            "xox", "AIza", "eyJ")  # fmt: skip


# ... and at least one of these characters, found faster still (memchr).
_MARKER_CHARS = ("-", "_", "A", "B", "J")


def redact_text(value: str) -> str:
    for char in _MARKER_CHARS:
        if char in value:
            break
    else:
        return value
    for marker in _MARKERS:
        if marker in value:
            return _SECRET_VALUE.sub(REDACTED, value)
    return value


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET_NAME.search(name)


def redact_value(value: Any) -> Any:
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


def redact_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    if not attributes:
        return {}
    return {
        key: REDACTED if is_secret_name(key) else redact_value(value)
        for key, value in attributes.items()
    }

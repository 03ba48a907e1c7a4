"""Fault injection for model calls, asked for by a run's input.

A fault names a model call by its number (``call=N``): model call N is the run's
Nth ``invoke_model_activity``, counted the way the dashboard counts them. Tool
activities (``activity_as_tool``) take activity ids too, so model call 3 may be
activity 4; worker.model_calls carries the number to the activity. Specs are
small strings so they fit a form field and a CLI flag alike:

- ``call=2:fail=2``   fail the first 2 attempts of call 2, then succeed
- ``call=1:permanent`` fail every attempt of call 1 (retries are exhausted)
- ``call=1:fatal``    fail call 1 with a non-retryable error (no retries)
- ``call=3:slow=5000`` delay call 3 by 5000 ms on every attempt
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

FAULTS_METADATA_KEY = "loomview_faults"


class FaultSpecError(ValueError):
    """A fault spec that cannot be understood."""


@dataclass(frozen=True)
class Fault:
    call: int
    fail_attempts: int = 0
    permanent: bool = False
    fatal: bool = False
    slow_ms: int = 0

    def failure_for(self, attempt: int) -> str | None:
        """The failure kind this fault injects on ``attempt``, or None to let it pass."""
        if self.fatal:
            return "fatal"
        if self.permanent or attempt <= self.fail_attempts:
            return "retryable"
        return None


def _positive_int(name: str, raw: str, spec: str, minimum: int = 1) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise FaultSpecError(
            f"fault {spec!r}: {name} must be a whole number, got {raw!r}"
        ) from None
    if value < minimum:
        raise FaultSpecError(f"fault {spec!r}: {name} must be at least {minimum}, got {value}")
    return value


def parse_fault(spec: str) -> Fault:
    """Parse one fault spec such as ``call=2:fail=2``; raise FaultSpecError if malformed."""
    parts = [part.strip() for part in spec.strip().split(":") if part.strip()]
    if not parts:
        raise FaultSpecError("empty fault spec")
    fields: dict[str, str | None] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if key in fields:
            raise FaultSpecError(f"fault {spec!r}: {key!r} given twice")
        fields[key] = value.strip() if sep else None
    unknown = set(fields) - {"call", "fail", "permanent", "fatal", "slow"}
    if unknown:
        raise FaultSpecError(
            f"fault {spec!r}: unknown key {sorted(unknown)[0]!r} "
            "(expected call=N with one of fail=K, permanent, fatal, slow=MS)"
        )
    raw_call: str | None = fields.pop("call", None)
    if raw_call is None:
        raise FaultSpecError(f"fault {spec!r}: missing call=N")
    call = _positive_int("call", raw_call, spec)
    if len(fields) != 1:
        raise FaultSpecError(
            f"fault {spec!r}: give exactly one of fail=K, permanent, fatal, slow=MS"
        )
    ((kind, argument),) = fields.items()
    if kind in ("permanent", "fatal"):
        if argument is not None:
            raise FaultSpecError(f"fault {spec!r}: {kind} takes no value")
        return Fault(call=call, permanent=kind == "permanent", fatal=kind == "fatal")
    if argument is None:
        raise FaultSpecError(f"fault {spec!r}: {kind} needs a value ({kind}=N)")
    if kind == "fail":
        return Fault(call=call, fail_attempts=_positive_int("fail", argument, spec))
    return Fault(call=call, slow_ms=_positive_int("slow", argument, spec))


def parse_faults(specs: list[str]) -> list[Fault]:
    faults = [parse_fault(spec) for spec in specs]
    calls = [fault.call for fault in faults]
    duplicates = sorted({call for call in calls if calls.count(call) > 1})
    if duplicates:
        raise FaultSpecError(f"more than one fault for call {duplicates[0]}")
    return faults


def encode_faults(faults: list[Fault]) -> str:
    return json.dumps([asdict(fault) for fault in faults], separators=(",", ":"))


def decode_faults(encoded: str | None) -> dict[int, Fault]:
    if not encoded:
        return {}
    return {item["call"]: Fault(**item) for item in json.loads(encoded)}

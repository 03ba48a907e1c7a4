"""Channels group names for live trace updates, from one place.

Channels only accepts group names of ASCII letters, digits, ``-``, ``_`` and
``.`` shorter than 100 characters, while a Temporal workflow id may be any
string; ids that do not fit are replaced by a stable digest, so the consumer
and the publisher, both calling these helpers, still meet in the same group.
"""

import re

from telemetry.vocab import run_digest

RUNS_GROUP = "runs"
_VALID = re.compile(r"^[A-Za-z0-9_.\-]{1,99}$")


def run_group(workflow_id: str, run_id: str) -> str:
    name = f"run.{workflow_id}.{run_id}"
    if _VALID.match(name):
        return name
    digest = run_digest(workflow_id, run_id)[:40]
    return f"run.h.{digest}"


def runs_group() -> str:
    return RUNS_GROUP

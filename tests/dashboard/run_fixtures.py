"""A real triage run (call 1 failed twice, then succeeded), recorded from the bundled
worker with tracing on: its Temporal history (proto JSON, as `temporal workflow
show -o json` prints it) and its stored spans."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from temporalio.api.history.v1 import History

from tracing.models import Span

FIXTURE = Path(__file__).parent / "fixtures" / "triage_retries.json"


def recorded() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def store_spans(data: dict[str, Any]) -> list[Span]:
    return Span.objects.bulk_create(Span(**copy.deepcopy(row)) for row in data["spans"])


def history_proto(data: dict[str, Any]) -> History:
    return json_format.ParseDict({"events": data["history"]}, History())

"""Worker settings from environment variables, with safe local defaults.

Temporal connection settings are not here: they come from Temporal's own env
config (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from temporalio.common import RetryPolicy
from temporalio.openai_agents import ModelActivityParameters

DEFAULT_TASK_QUEUE = "loomview-agents"
PROVIDERS = ("demo", "openai")
ROLES = ("all", "workflows", "models")


class ConfigError(ValueError):
    """An environment variable with a value the worker cannot use."""


def envstr(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def envfloat(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def envint(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = envstr(name, default).lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class WorkerConfig:
    task_queue: str
    model_task_queue: str | None
    role: str
    provider: str
    openai_model: str
    demo_latency_ms: int
    demo_log: str | None
    model_start_to_close: timedelta
    model_heartbeat: timedelta | None
    model_retry_initial: timedelta
    model_retry_max: timedelta
    model_max_attempts: int
    max_cached_workflows: int | None
    tracing: bool
    openai_traces: bool = False

    @classmethod
    def from_env(cls) -> WorkerConfig:
        heartbeat = envfloat("LOOMVIEW_MODEL_HEARTBEAT_SECONDS", 0.0)
        cached = os.environ.get("LOOMVIEW_MAX_CACHED_WORKFLOWS", "").strip()
        return cls(
            task_queue=envstr("LOOMVIEW_TASK_QUEUE", DEFAULT_TASK_QUEUE),
            model_task_queue=os.environ.get("LOOMVIEW_MODEL_TASK_QUEUE", "").strip() or None,
            role=envchoice("LOOMVIEW_WORKER_ROLE", "all", ROLES),
            provider=envchoice("LOOMVIEW_MODEL_PROVIDER", "demo", PROVIDERS),
            openai_model=envstr("LOOMVIEW_OPENAI_MODEL", "gpt-4o-mini"),
            demo_latency_ms=envint("LOOMVIEW_DEMO_LATENCY_MS", 200),
            demo_log=os.environ.get("LOOMVIEW_DEMO_LOG", "").strip() or None,
            model_start_to_close=timedelta(
                seconds=envfloat("LOOMVIEW_MODEL_START_TO_CLOSE_SECONDS", 120.0, minimum=0.1)
            ),
            model_heartbeat=timedelta(seconds=heartbeat) if heartbeat else None,
            model_retry_initial=timedelta(
                seconds=envfloat("LOOMVIEW_MODEL_RETRY_INITIAL_SECONDS", 1.0, minimum=0.01)
            ),
            model_retry_max=timedelta(
                seconds=envfloat("LOOMVIEW_MODEL_RETRY_MAX_SECONDS", 10.0, minimum=0.01)
            ),
            model_max_attempts=envint("LOOMVIEW_MODEL_MAX_ATTEMPTS", 3, minimum=1),
            max_cached_workflows=(
                envint("LOOMVIEW_MAX_CACHED_WORKFLOWS", 1000) if cached else None
            ),
            tracing=envchoice("LOOMVIEW_TRACING", "on", ("on", "off")) == "on",
            openai_traces=envchoice("LOOMVIEW_OPENAI_TRACES", "off", ("on", "off")) == "on",
        )

    def model_params(self) -> ModelActivityParameters:
        return ModelActivityParameters(
            task_queue=self.model_task_queue,
            start_to_close_timeout=self.model_start_to_close,
            heartbeat_timeout=self.model_heartbeat,
            retry_policy=RetryPolicy(
                initial_interval=self.model_retry_initial,
                backoff_coefficient=2.0,
                maximum_interval=self.model_retry_max,
                maximum_attempts=self.model_max_attempts,
            ),
        )

from datetime import timedelta

import pytest

from worker.config import ConfigError, WorkerConfig
from worker.providers import DemoModelProvider, OpenAIModelProvider, build_provider


def test_defaults_match_the_documented_model_activity_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "LOOMVIEW_MODEL_START_TO_CLOSE_SECONDS",
        "LOOMVIEW_MODEL_RETRY_INITIAL_SECONDS",
        "LOOMVIEW_MODEL_RETRY_MAX_SECONDS",
        "LOOMVIEW_MODEL_MAX_ATTEMPTS",
        "LOOMVIEW_MODEL_TASK_QUEUE",
        "LOOMVIEW_MODEL_HEARTBEAT_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    params = WorkerConfig.from_env().model_params()
    assert params.start_to_close_timeout == timedelta(seconds=120)
    assert params.task_queue is None and params.heartbeat_timeout is None
    assert params.retry_policy is not None
    assert params.retry_policy.initial_interval == timedelta(seconds=1)
    assert params.retry_policy.maximum_interval == timedelta(seconds=10)
    assert params.retry_policy.maximum_attempts == 3


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOMVIEW_MODEL_START_TO_CLOSE_SECONDS", "30")
    monkeypatch.setenv("LOOMVIEW_MODEL_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("LOOMVIEW_MODEL_TASK_QUEUE", "models")
    params = WorkerConfig.from_env().model_params()
    assert params.start_to_close_timeout == timedelta(seconds=30)
    assert params.retry_policy is not None and params.retry_policy.maximum_attempts == 5
    assert params.task_queue == "models"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LOOMVIEW_MODEL_MAX_ATTEMPTS", "three", "must be a whole number"),
        ("LOOMVIEW_MODEL_MAX_ATTEMPTS", "0", "must be at least 1"),
        ("LOOMVIEW_MODEL_START_TO_CLOSE_SECONDS", "soon", "must be a number"),
        ("LOOMVIEW_MODEL_PROVIDER", "anthropic", "must be one of demo, openai"),
        ("LOOMVIEW_WORKER_ROLE", "boss", "must be one of all, workflows, models"),
        ("LOOMVIEW_OPENAI_TRACES", "maybe", "must be one of on, off"),
    ],
)
def test_bad_values_are_clear_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name} {message}"):
        WorkerConfig.from_env()


def test_openai_traces_are_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOMVIEW_OPENAI_TRACES", raising=False)
    assert WorkerConfig.from_env().openai_traces is False
    monkeypatch.setenv("LOOMVIEW_OPENAI_TRACES", "on")
    assert WorkerConfig.from_env().openai_traces is True


def test_provider_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("LOOMVIEW_MODEL_PROVIDER", raising=False)
    assert isinstance(build_provider(WorkerConfig.from_env()), DemoModelProvider)
    monkeypatch.setenv("LOOMVIEW_MODEL_PROVIDER", "openai")
    with pytest.raises(ConfigError, match="needs OPENAI_API_KEY"):
        build_provider(WorkerConfig.from_env())
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
    assert isinstance(build_provider(WorkerConfig.from_env()), OpenAIModelProvider)

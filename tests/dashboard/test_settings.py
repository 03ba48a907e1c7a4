import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from dashboard.env import envbool, envint, envlist, envstr

BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("yes", True), ("OFF", False)])
def test_envbool_accepts_common_spellings(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("LOOMVIEW_TEST_FLAG", raw)
    assert envbool("LOOMVIEW_TEST_FLAG", not expected) is expected


def test_envbool_rejects_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOMVIEW_TEST_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="LOOMVIEW_TEST_FLAG"):
        envbool("LOOMVIEW_TEST_FLAG", False)


def test_envint_rejects_non_integers_and_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOMVIEW_TEST_PORT", "80a")
    with pytest.raises(ImproperlyConfigured, match="LOOMVIEW_TEST_PORT"):
        envint("LOOMVIEW_TEST_PORT", 8000)
    monkeypatch.setenv("LOOMVIEW_TEST_PORT", "70000")
    with pytest.raises(ImproperlyConfigured, match="maximum"):
        envint("LOOMVIEW_TEST_PORT", 8000, minimum=1, maximum=65535)


def test_unset_or_empty_variables_fall_back_to_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOMVIEW_TEST_UNSET", raising=False)
    monkeypatch.setenv("LOOMVIEW_TEST_EMPTY", "")
    assert envstr("LOOMVIEW_TEST_UNSET", "x") == "x"
    assert envint("LOOMVIEW_TEST_EMPTY", 7) == 7
    assert envbool("LOOMVIEW_TEST_EMPTY", True) is True
    monkeypatch.setenv("LOOMVIEW_TEST_HOSTS", "a.example, b.example,,")
    assert envlist("LOOMVIEW_TEST_HOSTS", []) == ["a.example", "b.example"]


def test_settings_refuse_to_load_with_a_bad_debug_value(tmp_path: Path) -> None:
    env = {**os.environ, "LOOMVIEW_DEBUG": "sometimes", "LOOMVIEW_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", "import dashboard.settings"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "LOOMVIEW_DEBUG" in result.stderr


def test_secret_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    env["LOOMVIEW_DATA_DIR"] = str(tmp_path)
    code = "import dashboard.settings as s; print(s.SECRET_KEY)"
    keys = [
        subprocess.run(
            [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert keys[0] and keys[0] == keys[1]
    key_file = tmp_path / "secret-key"
    assert key_file.read_text().strip() == keys[0]
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_start_form_default_task_queue_is_the_workers() -> None:
    from django.conf import settings

    from worker.config import DEFAULT_TASK_QUEUE

    assert settings.LOOMVIEW_TASK_QUEUE == DEFAULT_TASK_QUEUE

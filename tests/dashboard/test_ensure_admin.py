import stat
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def run_ensure_admin() -> str:
    out = StringIO()
    call_command("ensure_admin", stdout=out)
    return out.getvalue()


def test_creates_superuser_and_stores_password_0600(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOOMVIEW_ADMIN_PASSWORD", raising=False)
    output = run_ensure_admin()

    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    password_file = data_dir / "admin-password"
    password = password_file.read_text().strip()
    assert len(password) >= 20
    assert admin.check_password(password)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password in output
    assert str(password_file) in output


def test_is_idempotent_and_never_prints_the_password_again(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOOMVIEW_ADMIN_PASSWORD", raising=False)
    run_ensure_admin()
    password = (data_dir / "admin-password").read_text().strip()

    output = run_ensure_admin()

    assert User.objects.filter(username="admin").count() == 1
    assert User.objects.get(username="admin").check_password(password)
    assert password not in output
    assert "exists" in output
    assert str(data_dir / "admin-password") in output


def test_password_from_environment_is_used_and_never_printed(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOMVIEW_ADMIN_PASSWORD", "s3cret-from-env-Xq9")
    output = run_ensure_admin()

    assert User.objects.get(username="admin").check_password("s3cret-from-env-Xq9")
    assert "s3cret-from-env-Xq9" not in output
    assert "LOOMVIEW_ADMIN_PASSWORD" in output
    assert not (data_dir / "admin-password").exists()


def test_existing_file_is_tightened_to_0600(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOOMVIEW_ADMIN_PASSWORD", raising=False)
    stale = data_dir / "admin-password"
    stale.write_text("old\n")
    stale.chmod(0o644)

    run_ensure_admin()

    assert stat.S_IMODE(stale.stat().st_mode) == 0o600
    assert stale.read_text().strip() != "old"


def test_existing_admin_is_left_alone_even_with_env_password(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    User.objects.create_superuser("admin", password="chosen-by-a-human-77")
    monkeypatch.setenv("LOOMVIEW_ADMIN_PASSWORD", "another-password-88")

    output = run_ensure_admin()

    assert User.objects.get(username="admin").check_password("chosen-by-a-human-77")
    assert "not changed" in output
    assert "another-password-88" not in output

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from pytest_django.fixtures import Settings

from tests.conftest import free_port


@pytest.fixture
def closed_temporal_address(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point Temporal's env config at a port nobody listens on."""
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("TEMPORAL_ADDRESS", address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    return address


@pytest.fixture
def data_dir(settings: Settings, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    path.mkdir()
    settings.LOOMVIEW_DATA_DIR = path
    yield path


@pytest.fixture
def user(db: None) -> User:
    return User.objects.create_user("ada", password="correct horse battery staple")


@pytest.fixture
def logged_in_client(client: Client, user: User) -> Client:
    client.force_login(user)
    return client


@pytest.fixture
def operator_client(client: Client, db: None) -> Client:
    """Signed in with the operator role (dashboard.operate_runs)."""
    from django.core.management import call_command

    operator = User.objects.create_user("otto", password="correct horse battery staple")
    call_command("set_role", "otto", "operator")
    client.force_login(operator)
    return client

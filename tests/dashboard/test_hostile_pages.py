"""Pages and the API under hostile input and faults (issue 9)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from pytest_django.fixtures import Settings

from dashboard import runs as run_list

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "key",
    [
        (10**30, "wf", "run"),
        (-(10**30), "wf", "run"),
        (2**63, "wf", "run"),
        (1, "w" * 1200, "run"),
    ],
)
def test_an_out_of_range_cursor_is_a_400(
    logged_in_client: Client, closed_temporal_address: str, key: tuple[int, str, str]
) -> None:
    cursor = run_list.encode_cursor(key)
    response = logged_in_client.get("/api/runs/", {"cursor": cursor})
    assert response.status_code == 400
    assert "cursor" in json.dumps(json.loads(response.content))
    # The page shows the broken link as a form error, with the newest runs.
    page = logged_in_client.get("/", {"cursor": cursor})
    assert page.status_code == 200
    assert "This page link is broken" in page.content.decode()


# -- login: throttled per user and per address, never a 500 --------------------------------

LOGIN = "/login/"


def _login(client: Client, username: str, password: str, address: str) -> Any:
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_failed_logins_lock_out_the_username_with_a_clear_message(
    client: Client, user: User, settings: Settings
) -> None:
    for n in range(settings.AXES_FAILURE_LIMIT - 1):
        # A new address each time: only the username ties these together.
        assert _login(client, "ada", "wrong", f"10.0.0.{n + 1}").status_code == 200
    # The last allowed failure locks the account; so does any attempt after it.
    assert _login(client, "ada", "wrong", "10.0.0.99").status_code == 429
    locked = _login(client, "ada", "correct horse battery staple", "10.0.1.1")
    assert locked.status_code == 429
    body = locked.content.decode()
    assert "Too many failed sign-ins" in body and "15 minutes" in body
    assert "_auth_user_id" not in client.session
    # Another account from another address is not affected.
    User.objects.create_user("bob", password="another good password")
    assert _login(client, "bob", "another good password", "10.0.2.1").status_code == 302


def test_failed_logins_lock_out_the_address(client: Client, user: User, settings: Settings) -> None:
    for n in range(settings.AXES_FAILURE_LIMIT):
        _login(client, f"nobody-{n}", "wrong", "10.9.9.9")
    assert _login(client, "ada", "correct horse battery staple", "10.9.9.9").status_code == 429
    assert _login(client, "ada", "correct horse battery staple", "10.9.9.8").status_code == 302


def test_the_client_address_behind_trusted_proxies(settings: Settings) -> None:
    from django.test import RequestFactory

    from dashboard.auth import client_address

    request = RequestFactory().get(
        "/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 1.2.3.4, 10.0.0.2"
    )
    assert client_address(request) == "10.0.0.1"
    settings.LOOMVIEW_TRUSTED_PROXY_COUNT = 2
    assert client_address(request) == "1.2.3.4"  # what the outer proxy saw; 6.6.6.6 is forged


def test_login_while_the_database_cannot_write_is_a_503_not_a_500(
    client: Client, user: User
) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA query_only = ON")
    try:
        good = client.post(LOGIN, {"username": "ada", "password": "correct horse battery staple"})
        bad = client.post(LOGIN, {"username": "ada", "password": "wrong"})
    finally:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA query_only = OFF")
    for response in (good, bad):
        assert response.status_code == 503
        assert int(response["Retry-After"]) > 0
        assert "The database is busy" in response.content.decode()


# -- an unknown run while Temporal is down ----------------------------------------------------


def test_an_unknown_run_while_temporal_is_down_shows_the_banner(
    logged_in_client: Client, closed_temporal_address: str
) -> None:
    response = logged_in_client.get("/runs/nope/nope-run/")
    assert response.status_code == 404
    body = response.content.decode()
    assert f"Temporal is unreachable at {closed_temporal_address}" in body
    assert "Run not found" in body


# -- Content-Security-Policy -------------------------------------------------------------------


def test_every_page_carries_a_strict_content_security_policy(
    logged_in_client: Client, closed_temporal_address: str
) -> None:
    for path in ("/", "/login/", "/audit/", "/tokens/", "/healthz", "/runs/a/b/"):
        policy = logged_in_client.get(path)["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'", path
        assert directives["style-src"] == "'self'", path
        assert directives["default-src"] == "'self'", path
        assert "unsafe" not in policy

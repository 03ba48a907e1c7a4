"""API tokens from the UI: issue (operators), last use, expiry, revocation (owner or operator)."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from dashboard.models import ApiToken, AuditEntry

pytestmark = pytest.mark.django_db


def _api(client: Client, raw: str) -> int:
    return client.get("/api/runs/", headers={"Authorization": f"Bearer {raw}"}).status_code


def test_an_operator_issues_a_token_shown_once_and_its_use_is_shown(
    operator_client: Client, closed_temporal_address: str
) -> None:
    response = operator_client.post("/tokens/new/", {"name": "grafana", "expires_in": "30"})
    assert response.status_code == 200
    raw = re.search(r"lv_[A-Za-z0-9_\-]+", response.content.decode())
    assert raw is not None
    token = ApiToken.objects.get(name="grafana")
    assert token.expires is not None
    assert timedelta(days=29) < token.expires - timezone.now() <= timedelta(days=30)
    listing = operator_client.get("/tokens/").content.decode()
    assert raw.group() not in listing and "never" in listing  # not shown again, never used
    assert _api(Client(), raw.group()) == 200
    token.refresh_from_db()
    assert token.last_used is not None
    assert "ago" in operator_client.get("/tokens/").content.decode()
    entry = AuditEntry.objects.get(action="token_create")
    assert entry.outcome == "ok" and entry.payload["name"] == "grafana"
    again = operator_client.post("/tokens/new/", {"name": "grafana"})
    assert again.status_code == 400 and "already have a token" in again.content.decode()


def test_an_expired_token_is_refused(closed_temporal_address: str, user: User) -> None:
    token, raw = ApiToken.issue(user, "old", timezone.now() - timedelta(seconds=1))
    assert token.expired
    assert _api(Client(), raw) == 401
    _, raw = ApiToken.issue(user, "new", timezone.now() + timedelta(days=1))
    assert _api(Client(), raw) == 200


def test_the_owner_revokes_their_own_token_and_it_stops_working(
    logged_in_client: Client, user: User, closed_temporal_address: str
) -> None:
    token, raw = ApiToken.issue(user, "mine")
    other, _ = ApiToken.issue(User.objects.create_user("olga", password="x"), "hers")
    page = logged_in_client.get("/tokens/").content.decode()
    assert "mine" in page and "hers" not in page  # a viewer sees their own tokens only
    assert logged_in_client.post(f"/tokens/{token.pk}/revoke/").status_code == 302
    assert not ApiToken.objects.filter(pk=token.pk).exists()
    assert _api(Client(), raw) == 401
    assert logged_in_client.post(f"/tokens/{other.pk}/revoke/").status_code == 403
    assert ApiToken.objects.filter(pk=other.pk).exists()
    outcomes = set(AuditEntry.objects.values_list("action", "outcome"))
    assert outcomes == {("token_revoke", "ok"), ("token_revoke", "denied")}


def test_an_operator_revokes_anyones_token(operator_client: Client) -> None:
    other, _ = ApiToken.issue(User.objects.create_user("olga", password="x"), "hers")
    assert "hers" in operator_client.get("/tokens/").content.decode()
    assert operator_client.post(f"/tokens/{other.pk}/revoke/").status_code == 302
    assert not ApiToken.objects.exists()


def test_a_viewer_cannot_issue_tokens(logged_in_client: Client) -> None:
    assert logged_in_client.post("/tokens/new/", {"name": "x"}).status_code == 403
    assert not ApiToken.objects.exists()
    assert "Issue a token" not in logged_in_client.get("/tokens/").content.decode()


def test_create_api_token_takes_an_expiry(user: User) -> None:
    out = StringIO()
    call_command(
        "create_api_token", "ada", "ci", "--expires-days", "7", stdout=out, stderr=StringIO()
    )
    token = ApiToken.objects.get(name="ci")
    assert token.expires is not None and token.expires - timezone.now() > timedelta(days=6)
    assert out.getvalue().startswith("lv_")

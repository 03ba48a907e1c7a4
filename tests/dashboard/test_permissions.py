"""Every state-changing request is an operator's: a walk over every route in the URLconf.

For each route that accepts POST, a signed-in viewer's POST is refused with
403 and nothing in the database changes but the audit log's record of the
refusal. New routes are covered without touching this test: a POST route
that forgets the permission check fails it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from dashboard.models import ApiToken, AuditEntry
from tracing.models import RunExport

pytestmark = pytest.mark.django_db

# Routes a viewer may POST to, and why.
NOT_OPERATOR_ACTIONS = {
    "login/": "signing in is for anyone",
    "logout/": "signing out ends one's own session",
    "v1/traces": "the OTLP receiver: exporters authenticate with LOOMVIEW_OTLP_TOKEN",
}
# What a POST route must be among those found, so the walk cannot pass empty.
KNOWN_POST_ROUTES = {
    "runs/new/",
    "runs/<str:workflow_id>/<str:run_id>/signal/",
    "runs/<str:workflow_id>/<str:run_id>/query/",
    "runs/<str:workflow_id>/<str:run_id>/update/",
    "runs/<str:workflow_id>/<str:run_id>/reset/",
    "runs/<str:workflow_id>/<str:run_id>/again/",
    "runs/<str:workflow_id>/<str:run_id>/cancel/",
    "runs/<str:workflow_id>/<str:run_id>/terminate/",
    "runs/<str:workflow_id>/<str:run_id>/export/",
    "tokens/new/",
    "tokens/<int:token_id>/revoke/",
}


def _routes(patterns: list[Any], prefix: str = "") -> Iterator[str]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            if route.startswith("admin/"):
                continue  # Django's admin: its own staff check, tested below
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route


def _concrete(route: str, ids: dict[str, int]) -> str:
    def value(match: re.Match[str]) -> str:
        converter, name = match.group(1) or "str", match.group(2)
        return str(ids.get(name, 1)) if converter == "int" else f"x-{name}"

    return "/" + re.sub(r"<(?:(\w+):)?(\w+)>", value, route)


def _counts() -> dict[str, int]:
    return {model._meta.label: model._default_manager.count() for model in apps.get_models()}


@pytest.fixture
def viewer(client: Client) -> Client:
    user = User.objects.create_user("vera", password="correct horse battery staple")
    call_command("set_role", "vera", "viewer")
    client.force_login(user)
    return client


def test_a_viewer_gets_403_from_every_post_route_and_nothing_changes(
    viewer: Client, closed_temporal_address: str
) -> None:
    owner = User.objects.create_user("olga", password="x")
    token, _ = ApiToken.issue(owner, "someone else's")
    job = RunExport.objects.create(workflow_id="wf", run_id="run", collector="c")
    ids = {"token_id": token.pk, "job_id": job.pk}
    found: set[str] = set()
    for route in _routes(get_resolver().url_patterns):
        if route in NOT_OPERATOR_ACTIONS:
            continue
        path = _concrete(route, ids)
        before = _counts()
        audited = AuditEntry.objects.count()
        response = viewer.post(path, {"name": "x", "payload": "{}", "reason": "r"})
        if response.status_code == 405:
            continue  # no POST here
        found.add(route)
        assert response.status_code == 403, f"{route}: {response.status_code}"
        after = _counts()
        denied = AuditEntry.objects.count() - audited
        assert denied == 1, f"{route}: the refusal is not audited"
        after["dashboard.AuditEntry"] -= denied
        assert after == before, f"{route} changed {set(after.items()) ^ set(before.items())}"
    assert found >= KNOWN_POST_ROUTES, KNOWN_POST_ROUTES - found
    assert ApiToken.objects.filter(pk=token.pk).exists()
    assert set(AuditEntry.objects.values_list("outcome", flat=True)) == {"denied"}


def test_admin_refuses_a_viewer_and_changes_nothing(viewer: Client) -> None:
    before = _counts()
    response = viewer.post("/admin/auth/user/add/", {"username": "mallory", "password1": "x"})
    assert response.status_code in (302, 403)
    assert _counts() == before


def test_operator_posts_need_a_csrf_token(db: None) -> None:
    operator = User.objects.create_user("otto", password="x")
    call_command("set_role", "otto", "operator")
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    before = _counts()
    for path in ("/runs/new/", "/runs/wf/run/cancel/", "/tokens/new/"):
        assert client.post(path, {"reason": "r", "name": "n"}).status_code == 403, path
    assert _counts() == before

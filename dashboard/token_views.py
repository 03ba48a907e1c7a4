"""API tokens: listed with last use and expiry, issued by operators, revoked by owner or operator.

Issuing and revoking are POSTs with a CSRF token, and both are audited like
every action on runs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from dashboard.action_views import _audit, _operator_or_403
from dashboard.models import OPERATE_RUNS, ApiToken

EXPIRY_CHOICES = [("", "Never"), ("7", "7 days"), ("30", "30 days"), ("90", "90 days"),
                  ("365", "1 year")]  # fmt: skip


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="what it is for, e.g. grafana")
    expires_in = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, label="Expires")

    def clean_name(self) -> str:
        return str(self.cleaned_data["name"]).strip()


def _visible(request: HttpRequest, can_operate: bool) -> QuerySet[ApiToken]:
    tokens = ApiToken.objects.select_related("user").order_by("-created")
    return tokens if can_operate else tokens.filter(user__pk=request.user.pk or 0)


def _page(request: HttpRequest, form: TokenForm, status: int = 200, **extra: Any) -> HttpResponse:
    can_operate = request.user.has_perm(OPERATE_RUNS)
    ctx = {"tokens": _visible(request, can_operate), "form": form, "can_operate": can_operate}
    return render(request, "dashboard/tokens.html", {**ctx, **extra}, status=status)


@require_GET
@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    return _page(request, TokenForm())


@require_POST
@login_required
def token_new(request: HttpRequest) -> HttpResponse:
    user = async_to_sync(_operator_or_403)(request, "token_create")
    form = TokenForm(request.POST)
    if not form.is_valid():
        async_to_sync(_audit)(user, "token_create", "", "", {}, "error", form.errors.as_text())
        return _page(request, form, status=400)
    name = form.cleaned_data["name"]
    days = form.cleaned_data["expires_in"]
    expires = timezone.now() + timedelta(days=int(days)) if days else None
    payload = {"name": name, "expires": expires.isoformat() if expires else None}
    if ApiToken.objects.filter(user=user, name=name).exists():
        form.add_error("name", f"you already have a token named {name!r}")
        async_to_sync(_audit)(user, "token_create", "", "", payload, "error", "name taken")
        return _page(request, form, status=400)
    token, raw = ApiToken.issue(user, name, expires)
    async_to_sync(_audit)(user, "token_create", "", "", payload, "ok", f"token {token.pk} issued")
    # The raw token is in this response only; the database keeps its digest.
    return _page(request, TokenForm(), issued=raw, issued_name=name)


@require_POST
@login_required
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    user = request.user
    token = get_object_or_404(ApiToken.objects.select_related("user"), pk=token_id)
    payload = {"name": token.name, "owner": token.user.get_username()}
    if token.user_id != user.pk and not user.has_perm(OPERATE_RUNS):
        async_to_sync(_audit)(
            user, "token_revoke", "", "", payload, "denied", "not the owner or an operator"
        )
        raise PermissionDenied("revoking another user's token needs the operator role")
    token.delete()
    async_to_sync(_audit)(user, "token_revoke", "", "", payload, "ok", f"token {token_id} revoked")
    return redirect("dash-tokens")

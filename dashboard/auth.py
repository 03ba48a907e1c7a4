"""Bearer API tokens: `Authorization: Bearer <token>` for the JSON API.

The token itself is never logged or stored, only its SHA-256 digest.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest
from django.utils import timezone

from dashboard.models import ApiToken, hash_token


def bearer_token(request: HttpRequest) -> str:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


def token_user(raw: str) -> AbstractBaseUser | None:
    """The active user owning this raw, unexpired token, or None; records when it was last used."""
    if not raw:
        return None
    token = ApiToken.objects.select_related("user").filter(token_hash=hash_token(raw)).first()
    if token is None or not token.user.is_active or token.expired:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used=timezone.now())
    return token.user


def api_user(request: HttpRequest) -> AbstractBaseUser | None:
    """The session user, else the bearer token's user, else None."""
    if request.user.is_authenticated:
        return request.user
    return token_user(bearer_token(request))


def client_address(request: HttpRequest) -> str:
    """The client's address, for login throttling: the socket's, or behind
    LOOMVIEW_TRUSTED_PROXY_COUNT proxies the one the outermost of them saw."""
    proxies = settings.LOOMVIEW_TRUSTED_PROXY_COUNT
    if proxies:
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        hops = [h for h in hops if h]
        if len(hops) >= proxies:
            return hops[-proxies]
    return str(request.META.get("REMOTE_ADDR") or "")

"""Site-wide response policy: the Content-Security-Policy, and a database fault is a 503, not a 500.

The policy is strict: scripts, styles, images, fonts and connections (htmx
requests, the live-update websockets) from this origin only, no inline script
or style, no plugins, no framing. Every asset is vendored (static/), every
behaviour lives in a static script, and inline ``style`` attributes are not
used (the span tree's geometry is set from data attributes by trace.js).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.db import IntegrityError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

logger = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
RETRY_AFTER_SECONDS = 5


class SecurityPolicyMiddleware:
    """Adds the Content-Security-Policy to every response that has none.

    Turns a database that cannot answer (locked, gone, full) into a 503 page
    with Retry-After instead of a 500: it is a moment's fault, not a bug.
    """

    # Both, so async views (the OTLP receiver) pay no thread hop for it.
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", settings.LOOMVIEW_CSP)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        response = await self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", settings.LOOMVIEW_CSP)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError) or isinstance(exception, IntegrityError):
            return None
        logger.warning(
            "database unavailable for %s %s: %s", request.method, request.path, exception
        )
        response = render(request, "dashboard/unavailable.html", status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

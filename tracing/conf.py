"""Receiver settings: a Django setting of the same name wins, else the environment.

Read per request so tests and operators can change them without a restart.
"""

from django.conf import settings

from dashboard.env import envint, envstr

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


def otlp_token() -> str:
    """The bearer token exporters must send; empty means no authentication."""
    value = getattr(settings, "LOOMVIEW_OTLP_TOKEN", None)
    return envstr("LOOMVIEW_OTLP_TOKEN", "") if value is None else str(value)


def max_body_bytes() -> int:
    """Largest accepted body, checked on the wire and again after gunzip."""
    value = getattr(settings, "LOOMVIEW_OTLP_MAX_BODY_BYTES", None)
    if value is None:
        return envint("LOOMVIEW_OTLP_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1)
    return int(value)

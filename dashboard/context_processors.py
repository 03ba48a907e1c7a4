from django.conf import settings
from django.http import HttpRequest


def loomview(request: HttpRequest) -> dict[str, object]:
    return {
        "temporal_ui_url": settings.LOOMVIEW_TEMPORAL_UI_URL,
        # For the login lockout page (django-axes renders it with this context too).
        "lockout_minutes": int(settings.AXES_COOLOFF_TIME.total_seconds() // 60),
    }

from django.conf import settings
from django.http import HttpRequest


def loomview(request: HttpRequest) -> dict[str, str]:
    return {"temporal_ui_url": settings.LOOMVIEW_TEMPORAL_UI_URL}

from typing import Any

from django.urls import path

from dashboard import consumers

# Any: Django's path() is typed for views, not for ASGI consumers, so its
# result never matches channels' stub type.
websocket_urlpatterns: list[Any] = [
    path("ws/runs/", consumers.RunsConsumer.as_asgi(), name="ws-runs"),  # type: ignore[arg-type]
]

from typing import Any

from django.urls import path

from dashboard import consumers, overview_consumers, run_consumers

# Any: Django's path() is typed for views, not for ASGI consumers, so its
# result never matches channels' stub type.
websocket_urlpatterns: list[Any] = [
    path("ws/runs/", consumers.RunsConsumer.as_asgi(), name="ws-runs"),  # type: ignore[arg-type]
    path(
        "ws/overview/",
        overview_consumers.OverviewConsumer.as_asgi(),  # type: ignore[arg-type]
        name="ws-overview",
    ),
    path(
        "ws/runs/<str:workflow_id>/<str:run_id>/",
        run_consumers.RunConsumer.as_asgi(),  # type: ignore[arg-type]
        name="ws-run",
    ),
]

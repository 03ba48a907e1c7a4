from typing import Any

# Live run updates arrive with the run page; the router is wired up already so
# consumers only need adding here. Any: Django's path() is typed for views, not
# for ASGI consumers, so its result never matches channels' stub type.
websocket_urlpatterns: list[Any] = []

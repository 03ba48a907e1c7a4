"""ASGI entry point: `daphne dashboard.asgi:application`."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
# Django must be set up before anything imports models (consumers, auth).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from dashboard import http_guard  # noqa: E402
from dashboard.maintenance import MAINTENANCE_CHANNEL, MaintenanceConsumer  # noqa: E402
from dashboard.routing import websocket_urlpatterns  # noqa: E402
from tracing.asgi import OtlpFastPath  # noqa: E402
from tracing.forwarder import FORWARDER_CHANNEL, ForwarderConsumer  # noqa: E402

# Bodies over the limit are refused before daphne buffers them.
http_guard.install()

# POST /v1/traces is answered without Django's request cycle (tracing.asgi).
http_app = OtlpFastPath(
    ASGIStaticFilesHandler(django_asgi_app) if settings.LOOMVIEW_SERVE_STATIC else django_asgi_app
)

application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
        # Background work (`manage.py runforwarder`), not served by daphne.
        "channel": ChannelNameRouter(
            {
                FORWARDER_CHANNEL: ForwarderConsumer.as_asgi(),
                MAINTENANCE_CHANNEL: MaintenanceConsumer.as_asgi(),
            }
        ),
    }
)

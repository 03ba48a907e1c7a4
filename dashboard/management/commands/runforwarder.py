"""`python manage.py runforwarder`: forward stored spans to the configured collectors,
and run the background maintenance (retention, the history archive; dashboard/maintenance.py).

A Channels background worker on the ``loomview-forwarder`` channel (see
tracing.forwarder); a dashboard command because the maintenance it runs asks
Temporal. ``make run`` starts it next to the dashboard; run one per deployment,
or more: collector leases keep each collector on one of them.
"""

import signal
from types import FrameType
from typing import Any

from channels.layers import get_channel_layer
from channels.routing import get_default_application
from django.core.management.base import BaseCommand, CommandError

from dashboard.maintenance import MAINTENANCE_CHANNEL
from tracing import forwarder, transport


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = "Forward stored spans to the OTLP collectors in LOOMVIEW_EXPORTERS."

    def handle(self, *args: Any, **options: Any) -> None:
        layer = get_channel_layer()
        if layer is None:
            raise CommandError("no channel layer configured (CHANNEL_LAYERS)")
        # SIGTERM (honcho, systemd) stops as cleanly as Ctrl-C: leases are
        # handed back, so the next forwarder does not wait for them to expire.
        signal.signal(signal.SIGTERM, _interrupt)
        worker = forwarder.ForwarderWorker(
            application=get_default_application(),
            # Maintenance (retention, the history archive) runs beside forwarding.
            channels=[forwarder.FORWARDER_CHANNEL, MAINTENANCE_CHANNEL],
            channel_layer=layer,
        )
        self.stdout.write(f"forwarder {forwarder.OWNER} on channel {forwarder.FORWARDER_CHANNEL}")
        try:
            worker.run()
        finally:
            forwarder.release()
            transport.close()

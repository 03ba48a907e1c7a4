"""Live overview: tells open overview pages that new spans were stored.

The page joins the runs group (the receiver publishes ``runs.changed`` after
every ingest) and refetches its data when told; the consumer sends at most
one nudge per REFRESH_SECONDS, however fast spans arrive, so a busy fleet
costs one data query per page every few seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from tracing.groups import runs_group

REFRESH_SECONDS = 3.0


class OverviewConsumer(AsyncWebsocketConsumer):
    joined = False
    last_sent = 0.0
    scheduled: asyncio.TimerHandle | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        await self.channel_layer.group_add(runs_group(), self.channel_name)
        self.joined = True
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.scheduled is not None:
            self.scheduled.cancel()
        if self.joined:
            self.joined = False
            await self.channel_layer.group_discard(runs_group(), self.channel_name)

    async def runs_changed(self, event: dict[str, Any]) -> None:
        if self.scheduled is not None:
            return
        wait = self.last_sent + REFRESH_SECONDS - time.monotonic()
        if wait <= 0:
            await self._nudge()
            return
        loop = asyncio.get_running_loop()
        self.scheduled = loop.call_later(wait, lambda: loop.create_task(self._nudge()))

    async def _nudge(self) -> None:
        self.scheduled = None
        self.last_sent = time.monotonic()
        if self.joined:
            await self.send(text_data="refresh")

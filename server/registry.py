"""Every open WebSocket connection, and the watchdog task that applies their time limits twice a second."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from websockets.exceptions import ConnectionClosed

from server.hub import SessionHub
from server.ws_handler import SOCKET_SEND_BUFFER, Connection


class ConnectionRegistry:
    """Every open connection, and the watchdog task that checks them twice a second."""

    def __init__(self, hub: SessionHub):
        self.hub = hub
        self.connections: set[Connection] = set()
        s = hub.settings
        self.period_s = min(0.5, s.init_timeout_s / 4, s.slow_client_timeout_s / 4)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="connection-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check(now)

    async def handle(self, ws) -> None:
        """websockets handler: one Connection per socket."""
        sock = ws.transport.get_extra_info("socket") if ws.transport is not None else None
        if sock is not None:  # the default autotuned buffer would hide a stalled reader behind megabytes
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
        conn = Connection(ws, self.hub)
        self.connections.add(conn)
        try:
            with contextlib.suppress(ConnectionClosed):
                await conn.serve()
        finally:
            self.connections.discard(conn)

"""HTTP connection cap: at the cap the oldest connection with no request in progress is dropped to make room, else 503.

Wraps aiohttp's protocol factory. A connection that never completes a
request (slowloris) is closed by aiohttp's keep-alive timeout, which the app
sets to HANDSHAKE_TIMEOUT_S and which also runs before the first request;
this cap bounds how many such connections (and file descriptors) exist
meanwhile, so /health keeps answering while they pile up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from aiohttp import web

log = logging.getLogger("front.http")

REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
           b"Connection: close\r\nContent-Length: 71\r\n\r\n"
           b'{"error":"busy","message":"too many HTTP connections; try again later"}')


class GuardedConnection(asyncio.Protocol):
    """One accepted HTTP connection: aiohttp's handler, or a 503 when the cap is full of busy connections."""

    def __init__(self, guard: "HttpGuard", inner: asyncio.Protocol):
        self.guard, self.inner = guard, inner
        self.transport: asyncio.Transport | None = None
        self.busy = 0  # requests in progress
        self.refused = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.guard.admit(self):
            self.refused = True
            transport.write(REFUSAL)
            transport.close()
            return
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            self.inner.data_received(data)

    def eof_received(self):
        return None if self.refused else self.inner.eof_received()

    def connection_lost(self, exc) -> None:
        self.guard.forget(self)
        if not self.refused:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()


class HttpGuard:
    """Protocol factory for the HTTP server that keeps at most `max_connections` connections."""

    def __init__(self, max_connections: int):
        self.factory = None  # aiohttp's web.Server (set once the app runner is set up)
        self.max_connections = max_connections
        self.open: OrderedDict[GuardedConnection, None] = OrderedDict()  # oldest first
        self.by_handler: dict[object, GuardedConnection] = {}
        self.evicted = 0
        self.refused = 0

    def __call__(self) -> GuardedConnection:
        return GuardedConnection(self, self.factory())

    def admit(self, conn: GuardedConnection) -> bool:
        if len(self.open) >= self.max_connections:
            idle = next((c for c in self.open if c.busy == 0), None)
            if idle is None:
                self.refused += 1
                log.warning("HTTP connection refused: %d connections, all with a request in progress "
                            "(MAX_HTTP_CONNECTIONS)", len(self.open))
                return False
            self.evicted += 1
            log.warning("HTTP connection cap (%d, MAX_HTTP_CONNECTIONS): dropping the oldest idle one",
                        self.max_connections)
            self.forget(idle)
            idle.transport.abort()
        self.open[conn] = None
        self.by_handler[conn.inner] = conn
        return True

    def forget(self, conn: GuardedConnection) -> None:
        self.open.pop(conn, None)
        if self.by_handler.get(conn.inner) is conn:
            del self.by_handler[conn.inner]

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        """Mark the connection busy while a request runs (a busy connection is never dropped for room)."""
        conn = self.by_handler.get(request.protocol)
        if conn is not None:
            conn.busy += 1
        try:
            return await handler(request)
        finally:
            if conn is not None:
                conn.busy -= 1

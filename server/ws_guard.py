"""The server's WebSocket connection class: bounds what websockets answers on its own (pongs), notes why it dropped one."""

from __future__ import annotations

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode

from server.limits import TokenBucket

CONTROL_FRAME_RATE = 20.0  # pings and pongs per second a client may send (browsers send none, libraries a few a minute)
CONTROL_FRAME_BURST = 100


class GuardedConnection(ServerConnection):
    """A ServerConnection that drops a client flooding control frames before their pongs pile up."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.control_frames = TokenBucket(CONTROL_FRAME_RATE, CONTROL_FRAME_BURST)
        self.dropped_for: str | None = None  # why the server dropped it (read by the connection's handler)

    def drop(self, reason: str) -> None:
        """End the TCP connection now (no closing handshake: the client is not playing by the rules)."""
        if self.dropped_for is None:
            self.dropped_for = reason
            self.transport.abort()

    def process_event(self, event) -> None:
        if (isinstance(event, Frame) and event.opcode in (Opcode.PING, Opcode.PONG)
                and not self.control_frames.take()):
            self.drop("ping_flood")
        super().process_event(event)

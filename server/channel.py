"""One client's outgoing side: bounded text and frame queues, and the one writer task that touches the socket.

Everything else only calls the non-blocking methods here: `send_json`,
`send_frame`, `close(code, reason)` (queued behind the text already waiting,
so an error always reaches the client before the close frame) and `abort`
(the client cannot take data: drop the TCP connection). A slow client slows
nobody but itself: its oldest frames are dropped and counted, and the
connection watchdog aborts it when a send has been blocked too long or its
socket buffer grows past `SEND_BUFFER_LIMIT`.

Frames belong to a *stream* (one world as this client sees it; `begin_stream`
starts one at a given frame index). The channel counts the frames of the
current stream it has handed to the socket and keeps the newest of them (up
to `SENT_TAIL_BYTES`), because a frame handed to the socket may still be
lost with the connection: `undelivered()` gives what a resumed client
may be missing (that tail, a send in progress, and the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque

from websockets.exceptions import ConnectionClosed

log = logging.getLogger("front.channel")

TEXT_QUEUE_LIMIT = 256  # JSON messages are few; a client that lets this many pile up is not reading: close 1013
SEND_BUFFER_LIMIT = 1024 * 1024  # bytes waiting in the socket's buffer (a frame is at most a few hundred KB)
CONGESTED_AFTER_S = 0.5  # a send blocked this long: the client takes no frames now (its world stops generating)
# Sent frames kept for a resume: more bytes than can wait in the transport (SEND_BUFFER_LIMIT) and the kernel's
# send buffer (256 KiB asked, doubled by Linux) together. The bytes are shared with the session's other listeners.
SENT_TAIL_BYTES = 2 * SEND_BUFFER_LIMIT


class ClientChannel:
    """Frames: bounded deque, oldest dropped and counted. Text: bounded, overflow closes. Close: after the text."""

    def __init__(self, ws, max_frames: int):
        self.ws = ws
        self.frames: deque[tuple[object, bytes]] = deque()  # (stream, jpeg)
        self.max_frames = max_frames
        self.text: deque[str] = deque()
        self.frames_sent = 0
        self.frames_dropped = 0
        self.closing = False  # no more messages are accepted
        self.close_code: int | None = None
        self.close_reason = ""
        self.finished = asyncio.Event()  # the writer has ended
        self._sending_since: float | None = None
        self.stream: object = None  # the stream whose frames are counted
        self.stream_sent = 0  # index of the next frame of the current stream to hand to the socket
        self.sent_tail: deque[bytes] = deque()  # newest frames of the stream handed over, SENT_TAIL_BYTES at most
        self._tail_bytes = 0
        self._in_send: tuple[object, bytes] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write(), name="client-writer")

    # -- what the rest of the front calls (never blocks) -------------------

    def send_json(self, obj: dict) -> bool:
        """Queue a JSON text message; False when the channel is closing."""
        if self.closing:
            return False
        try:
            text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
        except ValueError as exc:  # a NaN or infinity in our own message: a bug, never sent as non-JSON
            log.error("not sent to the client (%s): %.200r", exc, obj)
            return False
        if len(self.text) >= TEXT_QUEUE_LIMIT:
            log.warning("client text queue full (%d messages); closing the connection", TEXT_QUEUE_LIMIT)
            self.close(1013, "client not reading")
            return False
        self.text.append(text)
        self._wake.set()
        return True

    def send_frame(self, jpeg: bytes) -> int:
        """Queue a frame of the current stream; returns how many older frames were dropped to make room."""
        if self.closing:
            return 0
        dropped = 0
        while len(self.frames) >= self.max_frames:
            self.frames.popleft()
            dropped += 1
        self.frames_dropped += dropped
        self.frames.append((self.stream, jpeg))
        self._wake.set()
        return dropped

    def begin_stream(self, stream: object, first_index: int = 0) -> None:
        """Frames from now on belong to `stream`, counted from `first_index`; queued frames are forgotten."""
        self.frames.clear()
        self.stream, self.stream_sent = stream, first_index
        self.sent_tail.clear()
        self._tail_bytes = 0

    def undelivered(self) -> tuple[int, list[bytes]]:
        """(index of the first, frames) of the current stream that the client may not have received."""
        frames = list(self.sent_tail)
        first = self.stream_sent - len(frames)
        if self._in_send is not None and self._in_send[0] is self.stream:
            frames.append(self._in_send[1])
        frames += [jpeg for stream, jpeg in self.frames if stream is self.stream]
        return first, frames

    def close(self, code: int, reason: str) -> None:
        """Close after the text already queued; queued frames are dropped, later messages refused."""
        if self.closing:
            return
        self.closing = True
        self.close_code, self.close_reason = code, reason
        self.frames.clear()
        self._wake.set()

    def abort(self) -> None:
        """Drop the TCP connection now (the client cannot take even a close frame)."""
        self.closing = True
        self.text.clear()
        self.frames.clear()
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def finish(self, timeout_s: float) -> None:
        """Wait for the writer to end (close sent or connection gone); abort and stop it after `timeout_s`."""
        if not self.closing:
            self.close(1000, "")
        try:
            await asyncio.wait_for(self.finished.wait(), timeout_s)
        except asyncio.TimeoutError:
            self.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- health, for the connection watchdog -----------------------------

    def blocked_s(self, now: float) -> float:
        """Seconds the current send has waited for the client to take data (0 when not sending)."""
        return 0.0 if self._sending_since is None else now - self._sending_since

    def congested(self, now: float) -> bool:
        """The client has not taken data for a while: new frames would only be dropped."""
        return self.closing or self.blocked_s(now) > CONGESTED_AFTER_S

    def buffered_bytes(self) -> int:
        transport = getattr(self.ws, "transport", None)
        return transport.get_write_buffer_size() if transport is not None else 0

    @property
    def queued(self) -> int:
        return len(self.frames)

    # -- the writer ----------------------------------------------------------

    async def _send(self, message) -> None:
        self._sending_since = time.monotonic()
        try:
            await self.ws.send(message)
        finally:
            self._sending_since = None

    def _sent(self, jpeg: bytes) -> None:
        self.stream_sent += 1
        self.sent_tail.append(jpeg)
        self._tail_bytes += len(jpeg)
        while self._tail_bytes > SENT_TAIL_BYTES and len(self.sent_tail) > 1:
            self._tail_bytes -= len(self.sent_tail.popleft())

    async def _write(self) -> None:
        try:
            while True:
                if self.text:
                    await self._send(self.text.popleft())
                elif self.close_code is not None:
                    self._sending_since = time.monotonic()
                    await self.ws.close(self.close_code, self.close_reason)
                    return
                elif self.frames:
                    self._in_send = stream, jpeg = self.frames.popleft()
                    await self._send(jpeg)
                    self._in_send = None
                    self.frames_sent += 1
                    if stream is self.stream:
                        self._sent(jpeg)
                else:
                    self._wake.clear()
                    await self._wake.wait()
        except ConnectionClosed:
            pass
        finally:
            self.closing = True
            self.finished.set()

"""One client's outgoing side: a bounded frame queue (drop oldest) and a writer task.

The engine and the pacers only ever call the non-blocking `send_*` methods; the
writer task is the only place that awaits the socket, so a slow client slows
nobody but itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque

from websockets.exceptions import ConnectionClosed

log = logging.getLogger("front.channel")

TEXT_QUEUE_LIMIT = 256  # JSON messages are few; a client that lets this many pile up is gone


class ClientChannel:
    """Frames: bounded deque, oldest dropped and counted. Text: bounded, never silently dropped."""

    def __init__(self, ws, max_frames: int):
        self.ws = ws
        self.frames: deque[bytes] = deque()
        self.max_frames = max_frames
        self.text: deque[str] = deque()
        self.frames_sent = 0
        self.frames_dropped = 0
        self.closed = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write(), name="client-writer")

    async def close(self) -> None:
        self.closed = True
        self._wake.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def send_json(self, obj: dict) -> None:
        if self.closed:
            return
        if len(self.text) >= TEXT_QUEUE_LIMIT:
            log.warning("client text queue full (%d); closing the connection", TEXT_QUEUE_LIMIT)
            self.closed = True
            asyncio.create_task(self.ws.close(1013, "client not reading"))
            return
        self.text.append(json.dumps(obj, separators=(",", ":")))
        self._wake.set()

    def send_frame(self, jpeg: bytes) -> int:
        """Queue a frame; returns how many older frames were dropped to make room."""
        if self.closed:
            return 0
        dropped = 0
        while len(self.frames) >= self.max_frames:
            self.frames.popleft()
            dropped += 1
        self.frames_dropped += dropped
        self.frames.append(jpeg)
        self._wake.set()
        return dropped

    @property
    def queued(self) -> int:
        return len(self.frames)

    async def _write(self) -> None:
        try:
            while not self.closed:
                if not self.text and not self.frames:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self.text:
                    await self.ws.send(self.text.popleft())
                else:
                    await self.ws.send(self.frames.popleft())
                    self.frames_sent += 1
        except ConnectionClosed:
            self.closed = True

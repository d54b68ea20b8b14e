"""/test-frame requests through the engine: bounded in number, timed out, cancelled in the engine when they are gone."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid

from inference import protocol as P
from server.engine_link import EngineUnavailable


class TestFrameRefused(Exception):
    """The test frame cannot be rendered now; `status` is the HTTP answer (429 or 503), retry after `retry_after_s`."""

    def __init__(self, status: int, message: str, retry_after_s: int):
        super().__init__(message)
        self.status, self.message, self.retry_after_s = status, message, retry_after_s


class TestFrames:
    """At most `limit` test frames in the engine at once; each answered, timed out or cancelled."""

    def __init__(self, engine, *, limit: int, timeout_s: float):
        self.engine = engine  # EngineSupervisor: send(), heartbeat
        self.limit = limit
        self.timeout_s = timeout_s
        self.pending: dict[str, asyncio.Future] = {}

    def retry_after_s(self) -> int:
        """Whole seconds until a place is likely free: the engine's measured test-frame slice time, at least 1."""
        beat = self.engine.heartbeat
        ms = (beat.task_ms.get("test_frame") if beat else None) or 1000.0
        return max(1, math.ceil(ms / 1000.0))

    async def render(self, prompt: str, seed: int, width: int, height: int, owner: str) -> bytes:
        """One JPEG; raises TestFrameRefused, EngineUnavailable (engine down) or ValueError (bad request)."""
        if len(self.pending) >= self.limit:
            raise TestFrameRefused(429, f"{self.limit} test frames are already being rendered (TEST_FRAMES_MAX)",
                                   self.retry_after_s())
        request_id = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self.pending[request_id] = fut
        answered = False
        try:
            self.engine.send(P.RenderTestFrame(request_id=request_id, prompt=prompt, seed=seed, width=width,
                                               height=height, owner=owner))
            error, code, jpeg = await asyncio.wait_for(fut, self.timeout_s)
            answered = True
        except asyncio.TimeoutError:
            raise TestFrameRefused(503, f"the engine found no time for a test frame within {self.timeout_s:g} s "
                                        "(TEST_FRAME_TIMEOUT_S); streaming sessions go first",
                                   self.retry_after_s()) from None
        finally:
            self.pending.pop(request_id, None)
            if not answered:  # timed out, or the HTTP client left: stop the engine's work on it
                with contextlib.suppress(EngineUnavailable):
                    self.engine.send(P.CancelTestFrame(request_id=request_id))
        if error:
            if code == "engine_failed":
                raise EngineUnavailable(error)
            if code == "busy":
                raise TestFrameRefused(503, f"the engine has no room for a test frame now: {error}",
                                       self.retry_after_s())
            raise ValueError(error)
        return jpeg

    def on_result(self, msg: P.TestFrame, payloads: list[bytes]) -> None:
        fut = self.pending.get(msg.request_id)
        if fut is not None and not fut.done():
            fut.set_result((msg.error, msg.code, payloads[0] if payloads else None))

    def fail_all(self, reason: str) -> None:
        """The engine died: every waiting request gets 503."""
        for fut in self.pending.values():
            if not fut.done():
                fut.set_result((f"engine failed: {reason}", "engine_failed", None))

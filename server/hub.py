"""The front's core: sessions by id, routing of engine messages, test frames, periodic stats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from inference import protocol as P
from server.admission import AdmissionQueue, Waiting, capacity_by_size, fits_capacity
from server.engine_link import EngineSupervisor, EngineUnavailable
from server.metrics import FrontMetrics
from server.session import Session
from server.settings import Settings

log = logging.getLogger("front.hub")


class SessionHub:
    """Owns the engine supervisor and every session; the HTTP and WS handlers talk to this."""

    def __init__(self, settings: Settings, metrics: FrontMetrics, upsampler=None):
        self.settings = settings
        self.metrics = metrics
        self.upsampler = upsampler
        self.sessions: dict[str, Session] = {}
        self.admission = AdmissionQueue(settings.max_queue)
        self.started_at = time.time()
        self.frames_total_base = 0
        self.sessions_started = 0
        self.last_error: str | None = None
        self._test_frames: dict[str, asyncio.Future] = {}
        self._stats_task: asyncio.Task | None = None
        self.engine = EngineSupervisor(settings, on_message=self._on_engine_message,
                                       on_down=self._on_engine_down, on_ready=self._on_engine_ready)

    async def start(self) -> None:
        await self.engine.start()
        self._stats_task = asyncio.create_task(self._stats_loop(), name="stats")

    async def stop(self) -> None:
        if self._stats_task:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        for s in list(self.sessions.values()):
            await self.close_session(s)
        await self.engine.stop()

    # -- sessions ----------------------------------------------------------

    @property
    def full(self) -> bool:
        return len(self.sessions) >= self.settings.max_sessions

    def capacity(self) -> dict[str, float]:
        """Sessions per size the engine measured it can hold at 16 fps (empty when not measured or off)."""
        beat = self.engine.heartbeat
        if self.settings.admission_capacity != "measured" or beat is None:
            return {}
        return capacity_by_size(beat.batching)

    def has_room(self, size: str) -> bool:
        """One more `size` session stays within MAX_SESSIONS and the measured capacity."""
        open_sizes = [f"{s.params.width}*{s.params.height}" for s in self.sessions.values()]
        return not self.full and fits_capacity(open_sizes, size, self.capacity())

    def enqueue(self, entry: Waiting) -> int | None:
        """Queue an init for capacity; its position, or None when the queue is full."""
        position = self.admission.add(entry)
        self.metrics.sessions_queued.set(len(self.admission))
        return position

    def dequeue(self, owner: object) -> None:
        """Forget a waiting init (its client left or sent another init)."""
        if self.admission.remove(owner):
            self.metrics.sessions_queued.set(len(self.admission))

    def admit_waiting(self) -> None:
        """Start waiting inits, first come first served, while there is room for the head."""
        while (head := self.admission.head()) is not None and self.has_room(head.size):
            self.admission.pop_head()
            head.start()
        self.metrics.sessions_queued.set(len(self.admission))

    def add_session(self, session: Session) -> None:
        self.sessions[session.id] = session
        self.sessions_started += 1
        self.metrics.sessions_total.inc()
        self.metrics.sessions.set(len(self.sessions))
        session.start_pacer()
        self.open_session(session)

    def open_session(self, session: Session) -> None:
        try:
            session.open()
        except EngineUnavailable as exc:  # opened again by _on_engine_ready
            session.channel.send_json({"type": "status", "state": "starting", "session_id": session.id,
                                       "reason": str(exc)})

    async def close_session(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self.metrics.sessions.set(len(self.sessions))
        await session.close()
        self.admit_waiting()

    # -- engine events -----------------------------------------------------

    def _on_engine_message(self, msg, payloads: list[bytes]) -> None:
        if isinstance(msg, P.ChunkReady):
            s = self.sessions.get(msg.session_id)
            if s is not None:
                s.on_chunk(msg, payloads)
        elif isinstance(msg, P.SessionOpened):
            s = self.sessions.get(msg.session_id)
            if s is not None:
                s.on_opened()
        elif isinstance(msg, P.TestFrame):
            fut = self._test_frames.pop(msg.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result((msg.error, payloads[0] if payloads else None))
        elif isinstance(msg, P.EngineError):
            self._on_session_error(msg)

    def _on_session_error(self, msg: P.EngineError) -> None:
        s = self.sessions.get(msg.session_id or "")
        log.warning("engine error for session %s: %s: %s", msg.session_id, msg.code, msg.message)
        if s is None:
            return
        s.channel.send_json({"type": "error", "code": msg.code, "message": msg.message})
        self.metrics.client_errors.labels(msg.code).inc()
        if not s.opened:  # the world could not be built: the client may send another init
            asyncio.create_task(self.close_session(s))

    def _on_engine_down(self, reason: str) -> None:
        self.last_error = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} engine: {reason}"
        self.metrics.engine_restarts.inc()
        self.metrics.engine_ready.set(0)
        for fut in self._test_frames.values():
            if not fut.done():
                fut.set_result((f"engine failed: {reason}", None))
        self._test_frames.clear()
        for s in self.sessions.values():
            s.on_engine_down()
            s.channel.send_json({"type": "error", "code": "engine_failed",
                                 "message": f"the engine failed ({reason}); restarting it, your session resumes "
                                            "from its start view when it is back"})
            self.metrics.client_errors.labels("engine_failed").inc()

    async def _on_engine_ready(self, info: P.EngineReady) -> None:
        self.metrics.engine_ready.set(1)
        for s in list(self.sessions.values()):
            if not s.opened:
                s.first_chunk_frames, s.chunk_frames = info.first_chunk_frames, info.chunk_frames
                self.open_session(s)

    # -- test frames -------------------------------------------------------

    async def test_frame(self, prompt: str, seed: int, width: int, height: int, timeout_s: float = 30.0) -> bytes:
        """Render one frame through the engine; raises EngineUnavailable or ValueError (bad request)."""
        request_id = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self._test_frames[request_id] = fut
        try:
            self.engine.send(P.RenderTestFrame(request_id=request_id, prompt=prompt, seed=seed,
                                               width=width, height=height))
            error, jpeg = await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            raise EngineUnavailable(f"no test frame within {timeout_s:.0f} s") from None
        finally:
            self._test_frames.pop(request_id, None)
        if error:
            if error.startswith("engine failed"):
                raise EngineUnavailable(error)
            raise ValueError(error)
        return jpeg

    # -- stats -------------------------------------------------------------

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            stalled = 0
            for s in list(self.sessions.values()):
                stalled += s.state == "stalled"
                if s.opened:
                    s.channel.send_json(s.stats())
            self.metrics.late_sessions.set(stalled)
            self.admit_waiting()
            self.metrics.engine_ready.set(1 if self.engine.ready else 0)

    def status(self) -> dict:
        e = self.engine
        info, beat = e.info, e.heartbeat
        sessions = [s.summary() for s in self.sessions.values()]
        return {
            "engine": {"name": info.engine if info else self.settings.engine, "model": info.model if info else None,
                       "device": info.device if info else None, "world_size": info.world_size if info else None,
                       "state": e.state, "reason": e.reason, "pid": e.pid, "generation": e.generation,
                       "restarts": e.restarts, "chunk_frames": info.chunk_frames if info else None,
                       "chunk_ms": {"p50": beat.chunk_ms_p50, "p95": beat.chunk_ms_p95} if beat else None,
                       "queued_steps": beat.queued_steps if beat else None,
                       "batching": [_struct(b) for b in beat.batching] if beat else [],
                       "mixed_batches": beat.mixed_batches if beat else None,
                       "ranks": [_struct(r) for r in beat.ranks] if beat else []},
            "gpus": [_struct(g) for g in beat.gpus] if beat else [],
            "sessions": sessions,
            "totals": {"sessions": len(sessions), "sessions_started": self.sessions_started,
                       "max_sessions": self.settings.max_sessions, "queued": len(self.admission),
                       "frames_sent": self.metrics.frames_total, "frames_dropped": self.metrics.drops_total},
            "admission": {"mode": self.settings.admission, "max_queue": self.settings.max_queue,
                          "capacity_check": self.settings.admission_capacity, "capacity": self.capacity(),
                          "queue": self.admission.summary()},
            "upsampler": self.upsampler.status() if self.upsampler else {"state": "disabled"},
            "last_error": self.last_error,
        }


def _struct(obj) -> dict:
    return {f: getattr(obj, f) for f in obj.__struct_fields__}

"""The front's core: sessions by id, admission, kept worlds and watch links, engine message routing, periodic stats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from inference import protocol as P
from server.admission import (
    TARGET_LOAD, AdmissionBusy, AdmissionQueue, Waiting, capacity_by_size, fits_capacity, load_with,
)
from server.engine_link import EngineSupervisor, EngineUnavailable
from server.metrics import FrontMetrics
from server.resume import ResumeBook
from server.session import SETTLE_CHUNKS, Session, SessionParams
from server.settings import Settings
from server.testframe import TestFrames

log = logging.getLogger("front.hub")

ADMITTED_KEEP = 32  # admissions shown in /status with the load they were judged on


class SessionHub:
    """Owns the engine supervisor and every session; the HTTP and WS handlers talk to this."""

    def __init__(self, settings: Settings, metrics: FrontMetrics, upsampler=None):
        self.settings = settings
        self.metrics = metrics
        self.upsampler = upsampler
        self.sessions: dict[str, Session] = {}  # every world the engine has or is building (kept ones too)
        self.resume = ResumeBook()
        self.watched: dict[str, Session] = {}  # watch id -> world
        self._grace: dict[str, asyncio.TimerHandle] = {}  # session id -> end of its grace (detached worlds)
        self.admission = AdmissionQueue(settings.max_queue)
        self.reserved: dict[object, str] = {}  # owner -> size of an admitted init whose session is not made yet
        self.admitted: deque[dict] = deque(maxlen=ADMITTED_KEEP)  # the latest admissions and what they were judged on
        self.started_at = time.time()
        self.sessions_started = 0
        self.last_error: str | None = None
        self._stats_task: asyncio.Task | None = None
        self.engine = EngineSupervisor(settings, on_message=self._on_engine_message,
                                       on_down=self._on_engine_down, on_ready=self._on_engine_ready)
        self.test_frames = TestFrames(self.engine, limit=settings.test_frames_max,
                                      timeout_s=settings.test_frame_timeout_s)

    async def start(self) -> None:
        await self.engine.start()
        self._stats_task = asyncio.create_task(self._stats_loop(), name="stats")

    async def stop(self) -> None:
        if self._stats_task:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        for s in list(self.sessions.values()):
            self.close_session(s)
        await self.engine.stop()

    # -- admission -----------------------------------------------------------

    @property
    def full(self) -> bool:
        return len(self.sessions) + len(self.reserved) >= self.settings.max_sessions

    def capacity(self) -> dict[str, float]:
        """Sessions per size the engine measured it can hold at 16 fps (empty when not measured or off)."""
        beat = self.engine.heartbeat
        if self.settings.admission_capacity != "measured" or beat is None:
            return {}
        return capacity_by_size(beat.batching)

    def _open_sizes(self, replacing: Session | None) -> list[str]:
        sizes = [f"{s.params.width}*{s.params.height}" for s in self.sessions.values() if s is not replacing]
        return sizes + list(self.reserved.values())

    def has_room(self, size: str, replacing: Session | None = None) -> bool:
        """One more `size` session (taking `replacing`'s place) stays within MAX_SESSIONS and the capacity."""
        sizes = self._open_sizes(replacing)
        if len(sizes) >= self.settings.max_sessions:
            return False
        if self.settings.admission_capacity != "measured":
            return True
        # One world at a time: the capacity is measured on the worlds that run, and a world that has not streamed
        # for long (or is still being made) is not in it yet. Its cost grows with the number of worlds (the front,
        # the render workers and other processes on the same cores share them), so admitting a burst on a
        # measurement of one world would overshoot.
        if self.reserved or any(not s.settled() for s in self.sessions.values() if s is not replacing):
            return False
        return fits_capacity(sizes, size, self.capacity())

    async def admit(self, owner: object, size: str, *, replacing: Session | None, notify) -> None:
        """Return once `owner` may open a `size` world (a place is reserved for it); raises AdmissionBusy."""
        self.release(owner)
        if not len(self.admission) and self.has_room(size, replacing):
            self._reserve(owner, size, replacing)
            return
        if self.settings.admission == "reject" or self.admission.full:
            raise AdmissionBusy(self.busy_reason())
        entry = Waiting(owner=owner, size=size, replacing=replacing, notify=notify,
                        future=asyncio.get_running_loop().create_future())
        self.admission.add(entry)
        self.metrics.sessions_queued.set(len(self.admission))
        try:
            await entry.future
        finally:
            if not entry.future.done() or entry.future.cancelled():
                self.release(owner)

    def _reserve(self, owner: object, size: str, replacing: Session | None) -> None:
        """Hold a place for an admitted init, and remember what the admission was judged on (/status)."""
        sizes, capacity = self._open_sizes(replacing), self.capacity()
        self.reserved[owner] = size
        self.admitted.append({"at": round(time.time(), 3), "size": size, "open": len(sizes),
                              "capacity": capacity.get(size),
                              "load": round(load_with(sizes, size, capacity), 3) if capacity else None})

    def release(self, owner: object) -> None:
        """Forget the owner's queue place and reservation (it left, sent another init, or made its session)."""
        self.reserved.pop(owner, None)
        if self.admission.remove(owner):
            self.metrics.sessions_queued.set(len(self.admission))

    def admit_waiting(self) -> None:
        """Admit waiting inits, first come first served, while there is room for the head."""
        while (head := self.admission.head()) is not None and self.has_room(head.size, head.replacing):
            self.admission.pop_head()
            if not head.future.done():
                self._reserve(head.owner, head.size, head.replacing)
                head.future.set_result(None)
        self.metrics.sessions_queued.set(len(self.admission))

    def busy_reason(self) -> str:
        if self.full:
            why = f"the server is at its limit of {self.settings.max_sessions} sessions"
        else:
            why = "the engine is at its measured capacity for 16 fps"
        if self.settings.admission == "queue":
            why += f" and {len(self.admission)} of {self.settings.max_queue} queue places are taken"
        return why

    # -- sessions ----------------------------------------------------------

    def create_session(self, params: SessionParams, owner: object, owner_id: str,
                       replaces: Session | None = None) -> Session:
        """Make a world for an admitted owner (`replaces`: the world it will take the place of)."""
        self.reserved.pop(owner, None)
        info = self.engine.info
        first, rest = (info.first_chunk_frames, info.chunk_frames) if info else (self.settings.chunk_frames,) * 2
        session = Session(params, owner=owner_id, send_engine=self.engine.send, metrics=self.metrics,
                          first_chunk_frames=first, chunk_frames=rest,
                          prompt_interval_s=1.0 / self.settings.prompt_rate,
                          replaces=replaces.id if replaces is not None else "")
        self.sessions[session.id] = session
        self.watched[session.watch_id] = session
        self.sessions_started += 1
        self.metrics.sessions_total.inc()
        self.metrics.sessions.set(len(self.sessions))
        return session

    def open_session(self, session: Session, again: bool = False) -> None:
        try:
            session.open(again)
        except EngineUnavailable as exc:  # opened again by _on_engine_ready
            session.emit({"type": "status", "state": "starting", "session_id": session.id, "reason": str(exc)})

    def close_session(self, session: Session, reason: str = "ended") -> None:
        """Free a world; its resume token answers `reason` from now on (see server/resume.py)."""
        if self.sessions.pop(session.id, None) is not None:
            self.metrics.sessions.set(len(self.sessions))
        if self.watched.get(session.watch_id) is session:
            del self.watched[session.watch_id]
        timer = self._grace.pop(session.id, None)
        if timer is not None:
            timer.cancel()
        self.resume.forget(session, reason)
        session.close()
        self._count_kept()
        self.admit_waiting()

    # -- kept worlds and watch links ------------------------------------------

    def keep(self, session: Session, first_index: int, undelivered: list[bytes]) -> bool:
        """Keep a world whose owner's connection dropped for RESUME_GRACE_S; False when it cannot be kept."""
        grace = self.settings.resume_grace_s
        if grace <= 0 or session.closed or not session.is_open or not session.active or session.detached:
            return False
        session.detach(first_index, undelivered)
        self._grace[session.id] = asyncio.get_running_loop().call_later(grace, self._grace_over, session)
        self._count_kept()
        log.info("session %s kept for %g s (RESUME_GRACE_S) after its connection dropped", session.id, grace)
        return True

    def _grace_over(self, session: Session) -> None:
        self._grace.pop(session.id, None)
        if session.detached:
            log.info("session %s: nobody resumed it within RESUME_GRACE_S; closing it", session.id)
            self.close_session(session, "expired")

    def grace_left_s(self, session: Session) -> float | None:
        timer = self._grace.get(session.id)
        return None if timer is None else timer.when() - asyncio.get_running_loop().time()

    def reattach(self, session: Session, holder, frames_received: int) -> int:
        """A resumed connection takes a kept world; returns the stream index of the next frame it gets."""
        timer = self._grace.pop(session.id, None)
        if timer is not None:
            timer.cancel()
        next_index = session.attach(holder, frames_received)
        self._count_kept()
        return next_index

    def move_viewers(self, old: Session, new: Session) -> None:
        """An owner switched worlds (re-init): its watch link and viewers follow it."""
        if self.watched.get(new.watch_id) is new:
            del self.watched[new.watch_id]
        new.watch_id = old.watch_id
        self.watched[new.watch_id] = new
        for listener in list(old.listeners):
            if getattr(listener, "watching", None) is old:
                old.unsubscribe(listener)
                listener.watch_moved(new)

    def _count_kept(self) -> None:
        self.metrics.sessions_detached.set(sum(1 for s in self.sessions.values() if s.detached))

    # -- engine events -----------------------------------------------------

    def _on_engine_message(self, msg, payloads: list[bytes]) -> None:
        if isinstance(msg, P.TestFrame):
            self.test_frames.on_result(msg, payloads)
            return
        s = self.sessions.get(getattr(msg, "session_id", None) or "")
        if isinstance(msg, P.EngineError):
            log.warning("engine error for session %s: %s: %s", msg.session_id, msg.code, msg.message)
            self.metrics.client_errors.labels(msg.code).inc()
        if s is None:
            return
        if isinstance(msg, P.ChunkReady):
            s.on_chunk(msg, payloads)
            if s.chunks_received == SETTLE_CHUNKS and len(self.admission):  # now measured: the next may fit
                self.admit_waiting()
        elif isinstance(msg, P.SessionOpened):
            s.on_opened(msg.signature, msg.prompt)
        elif isinstance(msg, P.PromptChanged):
            s.on_prompt_changed(msg)
        elif isinstance(msg, P.EngineError) and msg.code == "session_limit" and s.is_open:
            s.on_limit(msg.message)  # the world stays; the client may reset it
        elif isinstance(msg, P.EngineError) and not s.on_open_failed(msg.code, msg.message):
            # A re-open after an engine restart failed, or the engine dropped a chunk of this world (e.g. out of
            # positions): the world cannot go on. The client is told and may start another.
            s.emit({"type": "error", "code": msg.code, "message": f"{msg.message}; this world has ended"})
            self.close_session(s)

    def _on_engine_down(self, reason: str) -> None:
        self.last_error = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} engine: {reason}"
        self.metrics.engine_restarts.inc()
        self.metrics.engine_ready.set(0)
        self.test_frames.fail_all(reason)
        for s in list(self.sessions.values()):
            if s.detached:  # a restart cannot keep a world: its owner gets a fresh one when it comes back
                self.close_session(s, "engine_restarted")
                continue
            s.on_engine_down(reason)
            self.metrics.client_errors.labels("engine_failed").inc()

    async def _on_engine_ready(self, info: P.EngineReady) -> None:
        self.metrics.engine_ready.set(1)
        for s in list(self.sessions.values()):
            if not s.is_open:
                s.policy.first_chunk_frames, s.policy.chunk_frames = info.first_chunk_frames, info.chunk_frames
                self.open_session(s, again=True)

    # -- stats -------------------------------------------------------------

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            stalled = 0
            viewers = 0
            for s in list(self.sessions.values()):
                stalled += s.policy.state == "stalled"
                viewers += s.viewers
                if s.is_open and s.active and not s.detached:
                    s.emit(s.stats())
            self.metrics.late_sessions.set(stalled)
            self.metrics.viewers.set(viewers)
            self.admit_waiting()
            self.metrics.engine_ready.set(1 if self.engine.ready else 0)

    def status(self) -> dict:
        e = self.engine
        info, beat = e.info, e.heartbeat
        sessions = [s.summary(_delivery(s), self.grace_left_s(s)) for s in self.sessions.values()]
        return {
            "engine": {"name": info.engine if info else self.settings.engine, "model": info.model if info else None,
                       "device": info.device if info else None, "world_size": info.world_size if info else None,
                       "state": e.state, "reason": e.reason, "pid": e.pid, "generation": e.generation,
                       "restarts": e.restarts, "chunk_frames": info.chunk_frames if info else None,
                       "heartbeat_age_s": e.heartbeat_age_s(),
                       "chunk_ms": {"p50": beat.chunk_ms_p50, "p95": beat.chunk_ms_p95} if beat else None,
                       "queued_steps": beat.queued_steps if beat else None,
                       "tasks": beat.tasks if beat else None, "task_ms": beat.task_ms if beat else {},
                       "lead_ms": beat.lead_ms if beat else None,
                       "batching": [_struct(b) for b in beat.batching] if beat else [],
                       "mixed_batches": beat.mixed_batches if beat else None,
                       "ranks": [_struct(r) for r in beat.ranks] if beat else []},
            "gpus": [_struct(g) for g in beat.gpus] if beat else [],
            "sessions": sessions,
            "totals": {"sessions": len(sessions), "sessions_started": self.sessions_started,
                       "max_sessions": self.settings.max_sessions, "queued": len(self.admission),
                       "frames_sent": self.metrics.frames_total, "frames_dropped": self.metrics.drops_total,
                       "test_frames": len(self.test_frames.pending),
                       "detached": sum(1 for s in self.sessions.values() if s.detached),
                       "viewers": sum(s.viewers for s in self.sessions.values())},
            "resume": {"grace_s": self.settings.resume_grace_s, "tokens": len(self.resume)},
            "watch": {"max_viewers_per_session": self.settings.max_viewers_per_session},
            "admission": {"mode": self.settings.admission, "max_queue": self.settings.max_queue,
                          "capacity_check": self.settings.admission_capacity, "capacity": self.capacity(),
                          "target_load": TARGET_LOAD, "queue": self.admission.summary(),
                          "admitted": list(self.admitted)},
            "upsampler": self.upsampler.status() if self.upsampler else {"state": "disabled"},
            "last_error": self.last_error,
        }


def _delivery(session: Session) -> dict:
    """The owner channel's drop and queue counts, when the session has an owner listening."""
    return session.holder.delivery() if session.holder is not None else {}


def _struct(obj) -> dict:
    return {f: getattr(obj, f) for f in obj.__struct_fields__}


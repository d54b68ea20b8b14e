"""A world (session): its engine state's handle, playback policy, thin pacer task, and listeners it emits to.

A session does not know who watches it. It emits events (JSON-able dicts)
and frames to its listeners (the connection that owns it, its `holder`, and
any viewers, each with its own channel), and it can outlive a listener.
`opened` is a future that resolves with the engine's batching signature or
raises OpenFailed; the owner calls `activate()` once it has switched to the
session, and streaming starts. Prompt changes are coalesced: at most one in
flight to the engine, at most one every `prompt_interval_s`, the latest wins.

When its owner's connection drops, a world can be `detach`ed: keys are
released, its clock (`WorldClock`) stands still, it asks for no chunks and
shows no frames, and it keeps the frames its owner may have missed; `attach`
gives it to a resumed connection, which first gets those frames again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from inference import protocol as P
from server.clock import WorldClock
from server.playback import PlaybackPolicy, PlayedFrame
from server.session_report import session_stats, session_summary

log = logging.getLogger("front.session")

LATENCY_KEEP = 256
IDLE_POLL_S = 0.05  # pacer wake-up while there is nothing to show (stall detection)
RETRY_S = 0.25  # wait before asking again when a chunk request could not be sent
ENDING_WARN_S = 30.0  # a world with a length limit warns its client this long before the end
# A new world's cost shows in the engine's step times once it has streamed this many chunks (the step-time
# average has mostly moved to the new load); measured admission waits for that before admitting the next.
SETTLE_CHUNKS = 8
SETTLE_MAX_S = 10.0  # ... or this long after it was made (a world that streams nothing does not hold admission)


@dataclass(kw_only=True)
class SessionParams:
    """What the client asked for in `init` (after upsampling and validation)."""

    prompt: str
    seed: int
    width: int
    height: int
    image: bytes | None
    engine: str


class OpenFailed(Exception):
    """The engine could not build the world (bad image, no room, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class SessionListener(Protocol):
    """Who receives a session's output (the owning connection and viewers)."""

    def session_event(self, session: "Session", event: dict) -> None: ...

    def session_frame(self, session: "Session", jpeg: bytes) -> None: ...

    def session_closed(self, session: "Session") -> None: ...

    def wants_frames(self) -> bool: ...


class Session:
    """One world: requests chunks as its playback policy says, plays them at 16 fps, emits to its listeners."""

    def __init__(self, params: SessionParams, *, owner: str, send_engine, metrics, first_chunk_frames: int,
                 chunk_frames: int, prompt_interval_s: float, replaces: str = "", clock=time.time):
        self.id = uuid.uuid4().hex[:12]
        self.params = params
        self.owner = owner  # the connection that opened it (the engine schedules opens per owner)
        self.replaces = replaces  # the world it will replace: that stream pays for engine time its open forces
        self.send_engine = send_engine  # callable(msg) -> None, raises EngineUnavailable
        self.metrics = metrics
        self.clock = WorldClock(clock)  # stands still while the world is detached
        self.created_at = self.clock()
        self.policy = PlaybackPolicy(first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames,
                                     now=self.created_at)
        self.listeners: list[SessionListener] = []
        self.holder: SessionListener | None = None  # the owner's connection (None while detached or being opened)
        self.watch_id = secrets.token_urlsafe(12)  # read-only watch links name this, never the session id
        self.detached_at: float | None = None  # wall time the owner's connection dropped (the world stands still)
        self._backlog_first = 0  # index of _backlog[0] in the owner's stream
        self._backlog: list[bytes] = []  # frames the dropped owner may not have received
        self._last_path: dict | None = None
        self.opened: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.is_open = False  # the engine holds this world now
        self.active = False  # its owner switched to it: stream
        self.closed = False
        self.prompt = params.prompt  # the prompt the engine uses
        self.wanted_prompt = params.prompt  # the newest prompt the client asked for
        self.prompt_in_flight: str | None = None
        self.prompt_changes = 0  # prompt changes sent to the engine
        self.prompt_interval_s = prompt_interval_s
        self._next_prompt_at = 0.0
        self._prompt_timer: asyncio.TimerHandle | None = None
        self.last_timings: P.ChunkTimings | None = None
        self.chunks_received = 0  # chunks the engine made for this world (admission waits for a few)
        self._stalls_counted_s = 0.0
        self._retry_at = 0.0
        self._ending_told = False  # the "ending" warning went out for this stream
        self._limit_told = False  # the session_limit error went out for this stream
        self._limit_message = ""
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_KEEP)
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._pace(), name=f"pacer-{self.id}")

    # -- listeners -----------------------------------------------------------

    def subscribe(self, listener: SessionListener) -> None:
        if listener not in self.listeners:
            self.listeners.append(listener)

    def unsubscribe(self, listener: SessionListener) -> None:
        with contextlib.suppress(ValueError):
            self.listeners.remove(listener)

    def emit(self, event: dict) -> None:
        for listener in list(self.listeners):
            listener.session_event(self, event)

    def _emit_frame(self, jpeg: bytes) -> None:
        for listener in list(self.listeners):
            listener.session_frame(self, jpeg)

    @property
    def viewers(self) -> int:
        return sum(1 for listener in self.listeners if getattr(listener, "watching", None) is self)

    @property
    def detached(self) -> bool:
        return self.detached_at is not None

    def settled(self) -> bool:
        """Whether the engine's measurements include this world's cost: it streamed SETTLE_CHUNKS chunks (or is
        detached, and costs nothing, or is older than SETTLE_MAX_S)."""
        return (self.detached or self.chunks_received >= SETTLE_CHUNKS
                or self.clock() - self.created_at >= SETTLE_MAX_S)

    # -- lifecycle -----------------------------------------------------------

    def open(self, again: bool = False) -> None:
        """Ask the engine to build the world (`again`: after an engine restart); raises EngineUnavailable.

        The engine keeps one pending open per owner (a newer init of a connection replaces its older one); a
        re-open is its own owner, since a connection's current and next world are both re-opened.
        """
        p = self.params
        self.is_open = False
        self.prompt_in_flight = None
        self.emit({"type": "status", "state": "starting", "session_id": self.id})
        self.send_engine(P.OpenSession(session_id=self.id, prompt=self.wanted_prompt, seed=p.seed, width=p.width,
                                       height=p.height, image=p.image,
                                       owner=f"{self.owner}/{self.id}" if again else self.owner,
                                       replaces="" if again else self.replaces))

    def activate(self, holder: SessionListener) -> None:
        """The owner switched to this world: start streaming (now, or when it is open)."""
        self.active = True
        self.holder = holder
        if self.is_open:
            self.policy.start(self.clock())
            self._wake.set()

    def close(self) -> None:
        """Stop streaming, free the engine's state and tell the listeners (idempotent)."""
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        if self.policy.stalled_at is not None:
            self._count_stall(now)
        self._task.cancel()
        if self._prompt_timer is not None:
            self._prompt_timer.cancel()
        if not self.opened.done():
            self.opened.cancel()
        with contextlib.suppress(Exception):
            self.send_engine(P.CloseSession(session_id=self.id))
        for listener in list(self.listeners):
            listener.session_closed(self)
        self.listeners.clear()

    def detach(self, first_index: int, undelivered: list[bytes]) -> None:
        """The owner's connection is gone: release keys, stand still, keep what the owner may have missed.

        `undelivered` are frames of the owner's stream from index `first_index` on that may not have arrived.
        """
        self.holder = None
        self.policy.release_keys(self.clock())
        self.clock.pause()
        self.detached_at = time.time()
        self._backlog_first, self._backlog = first_index, undelivered
        self.emit({"type": "status", "state": "paused", "session_id": self.id})
        self._wake.set()

    def attach(self, holder: SessionListener, frames_received: int) -> int:
        """A resumed owner takes the world back; returns the stream index of the next frame it gets.

        The owner received `frames_received` frames of its stream: the kept frames after those are played
        first, at the normal pace, then the world goes on from where it stood.
        """
        skip = min(max(0, frames_received - self._backlog_first), len(self._backlog))
        self.policy.replay(self._backlog[skip:])
        self.policy.next_due = None  # the owner has waited long enough: its first frame goes out now
        next_index = self._backlog_first + skip
        self._backlog = []
        self.detached_at = None
        self.clock.resume()
        self.holder = holder
        self.subscribe(holder)
        self.emit({"type": "status", "state": self.policy.state, "session_id": self.id})
        self._wake.set()
        return next_index

    # -- client input ----------------------------------------------------------

    def key(self, key: str, down: bool) -> None:
        self.policy.key(key, down, self.clock())

    def look(self, yaw_deg: float, pitch_deg: float) -> float:
        """Turn by a look delta (played at the look keys' rate); returns the degrees cut by the backlog bound."""
        return self.policy.look(yaw_deg, pitch_deg, self.clock())

    def release_keys(self) -> None:
        self.policy.release_keys(self.clock())

    def set_prompt(self, prompt: str) -> None:
        """Ask for a new prompt; it reaches the engine when the one in flight is done (latest wins)."""
        self.wanted_prompt = prompt
        self._push_prompt()

    def _push_prompt(self) -> None:
        self._prompt_timer = None
        if self.closed or not self.is_open or self.prompt_in_flight is not None:
            return
        if self.wanted_prompt == self.prompt:
            return
        now = self.clock()
        if now < self._next_prompt_at:  # the per-session prompt budget: the latest is sent when it allows
            self._prompt_timer = asyncio.get_running_loop().call_later(self._next_prompt_at - now, self._push_prompt)
            return
        try:
            self.send_engine(P.SetPrompt(session_id=self.id, prompt=self.wanted_prompt))
        except Exception as exc:  # engine down: the newest prompt goes with the re-open
            log.info("session %s: prompt not sent: %s", self.id, exc)
            return
        self.prompt_changes += 1
        self.prompt_in_flight = self.wanted_prompt
        self._next_prompt_at = now + self.prompt_interval_s

    def reset(self) -> None:
        self.send_engine(P.ResetSession(session_id=self.id))
        self._ending_told = self._limit_told = False
        self.policy.restart(self.clock())
        if self.policy.state == "ended":
            self.policy.state = "starting"
        self._wake.set()

    # -- engine events -----------------------------------------------------

    def on_opened(self, signature: str, prompt: str) -> None:
        self.is_open = True
        self.prompt = self.params.prompt = prompt
        if not self.opened.done():
            self.opened.set_result(signature)
        if self.active:  # re-opened after an engine restart: the stream starts again from the start view
            self.policy.start(self.clock())
            self._wake.set()
        self._push_prompt()

    def on_open_failed(self, code: str, message: str) -> bool:
        """The engine refused to build the world; True when an owner waits on `opened` and handles it."""
        if self.opened.done():
            return False
        self.opened.set_exception(OpenFailed(code, message))
        return True

    def on_chunk(self, msg: P.ChunkReady, jpegs: list[bytes]) -> None:
        late_before = self.policy.late_chunks
        now = self.clock()
        if not self.policy.on_chunk(msg.chunk_index, jpegs, now, msg.lead_s, msg.frames_left):
            return  # a chunk from before a reset or restart
        self.chunks_received += 1
        left = self.policy.seconds_left(now)
        if left is not None and left <= ENDING_WARN_S and not self._ending_told:
            self._ending_told = True
            self.emit({"type": "status", "state": "ending", "session_id": self.id, "seconds_left": round(left, 1),
                       "message": f"this world ends in {left:.0f} s (the model's length limit); "
                                  "reset or start a new world to go on"})
        if self.policy.late_chunks > late_before:
            self.metrics.late_chunks.inc()
        self.last_timings = msg.timings
        self.metrics.observe_chunk(msg.timings.total_ms / 1000.0)
        self._wake.set()

    def on_prompt_changed(self, msg: P.PromptChanged) -> None:
        self.prompt_in_flight = None
        if msg.error:
            if self.wanted_prompt == msg.prompt:
                self.wanted_prompt = self.prompt
            self.emit({"type": "error", "code": msg.code or "bad_field",
                       "message": f"the prompt was not changed: {msg.error}"})
        else:
            self.prompt = self.params.prompt = msg.prompt
        self._push_prompt()

    def on_limit(self, message: str) -> None:
        """The engine refused a chunk: the world is at its length limit (it stays; a reset starts it again)."""
        self.policy.reached_limit()
        self._limit_message = message
        self._wake.set()

    def _tell_limit(self) -> None:
        if self._limit_told:
            return
        self._limit_told = True
        self.emit({"type": "error", "code": "session_limit",
                   "message": self._limit_message or "this world reached the model's length limit; "
                                                     "send reset (or a new init) to go on"})

    def on_engine_down(self, reason: str) -> None:
        self.is_open = False
        self.prompt_in_flight = None
        self.policy.stop(self.clock())
        self.emit({"type": "error", "code": "engine_failed",
                   "message": f"the engine failed ({reason}); restarting it, your session resumes "
                              "from its start view when it is back"})

    # -- the pacer ---------------------------------------------------------

    def _wanted(self) -> bool:
        """Someone can take frames now (a stalled client's world asks the engine for nothing)."""
        return not self.listeners or any(listener.wants_frames() for listener in self.listeners)

    @property
    def last_path(self) -> dict | None:
        """The path of the chunk shown last (a viewer joining mid-way starts its map with it)."""
        return self._last_path

    def _request(self, now: float) -> None:
        req = self.policy.request(now)
        if req is None:
            return
        try:
            self.send_engine(P.StepChunk(session_id=self.id, chunk_index=req.seq,
                                         poses=np.ascontiguousarray(req.poses, dtype=np.float64).tobytes(),
                                         keys=np.ascontiguousarray(req.keys, dtype=np.float32).tobytes(),
                                         num_frames=len(req.keys), deadline=self.clock.to_wall(req.deadline),
                                         requested_at=self.clock.to_wall(now)))
        except Exception as exc:  # engine down (the hub re-opens the session when it is back) or its queue full
            self.policy.unsent(req)
            self._retry_at = now + RETRY_S
            log.info("session %s: chunk request not sent: %s", self.id, exc)

    async def _pace(self) -> None:
        """Ask for chunks and show frames when the policy says; sleep until the next frame is due."""
        while True:
            if self.detached:  # stands still until attach() wakes it
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self.clock()
            wanted = now >= self._retry_at and self._wanted()
            if wanted:
                self._request(now)
            frame = self.policy.due_frame(now)
            change = self.policy.update_state(now, frame is not None)
            if change == "generating":
                self._count_ended_stalls()
            if change is not None:
                self.emit({"type": "status", "state": change, "session_id": self.id})
            if change == "ended":
                self._tell_limit()
            if frame is not None:
                self._show(frame, now)
                continue
            wake = self.policy.next_wake(now, requesting=wanted)
            timeout = IDLE_POLL_S if wake is None else min(IDLE_POLL_S, max(0.0, wake - now))
            self._wake.clear()
            timer = asyncio.get_running_loop().call_later(timeout, self._wake.set)  # cheaper than wait_for
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    def _show(self, frame: PlayedFrame, now: float) -> None:
        if frame.path is not None:
            self._last_path = frame.path
            self.emit({"type": "path", **frame.path})
        self._emit_frame(frame.payload)
        self.metrics.frame_sent()
        for seconds in frame.latencies_s:
            self.latencies_ms.append(seconds * 1000.0)
            self.metrics.observe_control_latency(seconds)

    def _count_ended_stalls(self) -> None:
        new = self.policy.stalled_total_s - self._stalls_counted_s
        self._stalls_counted_s = self.policy.stalled_total_s
        self.metrics.stalled_seconds.inc(max(0.0, new))

    def _count_stall(self, now: float) -> None:
        self.metrics.stalled_seconds.inc(max(0.0, now - self.policy.stalled_at))

    # -- reporting -----------------------------------------------------------

    def latency_ms(self) -> dict:
        if not self.latencies_ms:
            return {"p50": None, "p95": None, "last": None}
        p50, p95 = np.percentile(np.asarray(self.latencies_ms), [50, 95])
        return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "last": round(self.latencies_ms[-1], 1)}

    def stats(self) -> dict:
        return session_stats(self)

    def summary(self, delivery: dict, grace_left_s: float | None = None) -> dict:
        """/status view; `delivery` is the owner channel's {"dropped", "queue"}."""
        return session_summary(self, delivery, grace_left_s)

"""A streaming session: key timeline -> per-chunk poses, just-in-time requests, 16 fps pacing.

Timing model. Chunk n covers a *control window* [R(n-1), R(n)) of wall-clock
time, where R(n) is the moment chunk n is requested; the window is cut into the
chunk's frames and the key timeline is sampled on it (sub-frame accurate), so
every key edge lands in exactly one frame. A chunk is requested when the frames
already buffered will run out within the expected round trip (EMA of measured
request -> frames time, plus one frame of margin): late enough that the chunk
reflects the newest keys, early enough that playback does not stall. With one
chunk in flight per session the control windows are one chunk long in steady
state, so key-to-screen latency is about one chunk plus one round trip.

Pacing. The pacer sends one frame per interval. The interval is 1/16 s while
the engine keeps up; when it cannot, the interval stretches to the measured
round trip / frames per chunk, so playback slows evenly instead of bursting,
and `stats` reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np

from inference import protocol as P
from inference.controls import CameraRig, KeyTimeline
from server.channel import ClientChannel

log = logging.getLogger("front.session")

FPS = 16
FRAME_S = 1.0 / FPS
STALL_AFTER_S = 0.5  # no frame to show for this long -> status "stalled"
LATENCY_KEEP = 256


@dataclass(kw_only=True)
class SessionParams:
    """What the client asked for in `init` (after upsampling and validation)."""

    prompt: str
    seed: int
    width: int
    height: int
    image: bytes | None
    engine: str


class Session:
    """One client's world: owns its key timeline, camera rig, playback buffer and pacer task."""

    def __init__(self, params: SessionParams, channel: ClientChannel, *, send_engine, metrics,
                 first_chunk_frames: int, chunk_frames: int):
        self.id = uuid.uuid4().hex[:12]
        self.params = params
        self.channel = channel
        self.send_engine = send_engine  # callable(msg) -> None, raises EngineUnavailable
        self.metrics = metrics
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self.timeline = KeyTimeline()
        self.rig = CameraRig()
        self.state = "starting"
        self.created_at = time.time()
        self.stream_started_at = self.created_at
        self.opened = False
        self.closed = False
        self.chunk_seq = 0  # id of the next chunk request (monotonic for the session's life)
        self.chunk_index = 0  # chunks requested since the stream (re)started; 0 = a first chunk
        self.in_flight_seq: int | None = None
        self.frames_generated = 0  # frame number of the next frame the engine will produce
        self.in_flight_since: float | None = None
        self.in_flight_deadline: float | None = None  # playback deadline of the chunk in flight (None: first chunk)
        self.late_chunks = 0  # chunks that arrived after their playback deadline
        self.stalled_total_s = 0.0  # time spent stalled, ended stalls
        self.stalled_at: float | None = None  # start of the current stall
        self.last_request_at: float | None = None
        self.rtt_ema_s = 0.3
        self.last_chunk_ms: float | None = None
        self.last_timings: P.ChunkTimings | None = None
        self.buffer: deque[tuple[int, bytes]] = deque()  # (frame number, jpeg) awaiting playback
        self.pending_edges: list[float] = []  # edge arrival times not yet assigned to a frame
        self.edge_targets: deque[tuple[int, float]] = deque()  # (frame number, edge time)
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_KEEP)
        self.frame_times: deque[float] = deque(maxlen=64)
        self.frames_sent = 0
        self.interval_s = FRAME_S
        self.on_opened_reply = None  # callable(session): sends the client's `session` reply once
        self._replied = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        """Ask the engine to build the world (again, after an engine restart)."""
        p = self.params
        self.opened = False
        self.state = "starting"
        self._restart_stream()
        self.channel.send_json({"type": "status", "state": "starting", "session_id": self.id})
        self.send_engine(P.OpenSession(session_id=self.id, prompt=p.prompt, seed=p.seed,
                                       width=p.width, height=p.height, image=p.image))

    def start_pacer(self) -> None:
        self._task = asyncio.create_task(self._pace(), name=f"pacer-{self.id}")

    async def close(self) -> None:
        self.closed = True
        if self.stalled_at is not None:
            self._end_stall(time.time())
        self._wake.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            self.send_engine(P.CloseSession(session_id=self.id))

    def _restart_stream(self) -> None:
        """Forget everything generated so far; the next chunk is a first chunk at the start pose."""
        self.rig.reset()
        self.chunk_index = 0
        self.in_flight_since = None
        self.last_request_at = None
        self.stream_started_at = time.time()  # keys before this moment never reach the new stream
        self.buffer.clear()
        self.pending_edges.clear()
        self.edge_targets.clear()

    # -- client input ------------------------------------------------------

    def key(self, key: str, down: bool, t: float) -> None:
        was_held = key in self.timeline.held(t)
        self.timeline.edge(key, "down" if down else "up", t)
        if was_held != down:
            self.pending_edges.append(t)

    def release_keys(self) -> None:
        self.timeline.release_all(time.time())

    def set_prompt(self, prompt: str) -> None:
        self.params.prompt = prompt
        self.send_engine(P.SetPrompt(session_id=self.id, prompt=prompt))

    def reset(self) -> None:
        self.send_engine(P.ResetSession(session_id=self.id))
        self._restart_stream()
        self._wake.set()

    # -- engine events -----------------------------------------------------

    def on_opened(self) -> None:
        self.opened = True
        if not self._replied and self.on_opened_reply is not None:
            self._replied = True
            self.on_opened_reply(self)
        self._maybe_request(time.time())

    def on_chunk(self, msg: P.ChunkReady, jpegs: list[bytes]) -> None:
        if msg.chunk_index != self.in_flight_seq or self.in_flight_since is None:
            return  # a chunk from before a reset or restart
        now = time.time()
        rtt = now - self.in_flight_since
        self.rtt_ema_s = 0.7 * self.rtt_ema_s + 0.3 * rtt
        self.in_flight_since = None
        self.last_chunk_ms = msg.timings.total_ms
        if self.in_flight_deadline is not None and now > self.in_flight_deadline:
            self.late_chunks += 1
            self.metrics.late_chunks.inc()
        self.last_timings = msg.timings
        self.metrics.observe_chunk(msg.timings.total_ms / 1000.0)
        base = self.frames_generated - len(jpegs)
        for i, jpeg in enumerate(jpegs):
            self.buffer.append((base + i, jpeg))
        # Slow evenly: never play faster than the engine can refill.
        self.interval_s = max(FRAME_S, self.rtt_ema_s / max(1, len(jpegs)))
        self._wake.set()
        self._maybe_request(now)

    def on_engine_down(self) -> None:
        self.opened = False
        self.state = "stalled"
        self.in_flight_since = None
        if self.stalled_at is None:
            self.stalled_at = time.time()

    # -- requests and pacing -----------------------------------------------

    def _frames_for(self, chunk_index: int) -> int:
        return self.first_chunk_frames if chunk_index == 0 else self.chunk_frames

    def _maybe_request(self, now: float) -> None:
        if not self.opened or self.closed or self.in_flight_since is not None:
            return
        remaining_s = len(self.buffer) * self.interval_s
        if self.chunk_index > 0 and remaining_s > self.rtt_ema_s + FRAME_S:
            return
        n = self._frames_for(self.chunk_index)
        t0 = self.last_request_at
        if t0 is None:
            t0 = max(self.stream_started_at, now - n * FRAME_S)
        now = max(now, t0 + 1e-6)
        keys = self.timeline.sample(t0, now, n)  # (n, 8)
        if self.chunk_index == 0:
            keys[0] = 0.0  # a session's first frame is the start view at the start pose
            self.frames_generated = 0
        poses = self.rig.advance(keys)  # (n, 4, 4)
        self._assign_edges(t0, now, n)
        deadline = now + remaining_s
        try:
            self.send_engine(P.StepChunk(session_id=self.id, chunk_index=self.chunk_seq,
                                         poses=np.ascontiguousarray(poses, dtype=np.float64).tobytes(),
                                         keys=np.ascontiguousarray(keys, dtype=np.float32).tobytes(),
                                         num_frames=n, deadline=deadline, requested_at=now))
        except Exception as exc:  # engine down: the hub re-opens the session when it is back
            log.info("session %s: chunk request not sent: %s", self.id, exc)
            return
        self.in_flight_since = now
        self.in_flight_deadline = deadline if self.chunk_index > 0 else None
        self.in_flight_seq = self.chunk_seq
        self.last_request_at = now
        self.chunk_seq += 1
        self.chunk_index += 1
        self.frames_generated += n

    def _assign_edges(self, t0: float, t1: float, n: int) -> None:
        """Map key edges of this window to the first frame whose pose they affect."""
        span = max(t1 - t0, 1e-9)
        for t in self.pending_edges:
            j = min(n - 1, max(0, int((t - t0) / span * n)))
            self.edge_targets.append((self.frames_generated + j, t))
        self.pending_edges.clear()

    async def _pace(self) -> None:
        next_due = time.time()
        empty_since: float | None = None
        while not self.closed:
            now = time.time()
            self._maybe_request(now)
            if not self.buffer:
                if empty_since is None:
                    empty_since = now
                if self.state == "generating" and now - empty_since > STALL_AFTER_S:
                    self.state = "stalled"
                    self.stalled_at = empty_since
                    self.channel.send_json({"type": "status", "state": "stalled", "session_id": self.id})
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.05)
                next_due = max(next_due, time.time())
                continue
            empty_since = None
            if now < next_due:
                await asyncio.sleep(next_due - now)
                continue
            frame_no, jpeg = self.buffer.popleft()
            self._emit(frame_no, jpeg, time.time())
            # Keep a steady cadence; after a stall restart the clock instead of bursting.
            next_due = max(next_due + self.interval_s, time.time() - self.interval_s)

    def _emit(self, frame_no: int, jpeg: bytes, now: float) -> None:
        if self.state != "generating":
            if self.stalled_at is not None:
                self._end_stall(now)
            self.state = "generating"
            self.channel.send_json({"type": "status", "state": "generating", "session_id": self.id})
        dropped = self.channel.send_frame(jpeg)
        if dropped:
            self.metrics.frames_dropped(dropped)
        self.metrics.frame_sent()
        self.frames_sent += 1
        self.frame_times.append(now)
        while self.edge_targets and self.edge_targets[0][0] <= frame_no:
            _, t_edge = self.edge_targets.popleft()
            ms = (now - t_edge) * 1000.0
            self.latencies_ms.append(ms)
            self.metrics.observe_control_latency(ms / 1000.0)

    def _end_stall(self, now: float) -> None:
        seconds = max(0.0, now - self.stalled_at)
        self.stalled_total_s += seconds
        self.metrics.stalled_seconds.inc(seconds)
        self.stalled_at = None

    # -- reporting ---------------------------------------------------------

    def stalled_s(self) -> float:
        """Seconds this session had no frame to show after it started playing (ongoing stall included)."""
        ongoing = time.time() - self.stalled_at if self.stalled_at is not None else 0.0
        return round(self.stalled_total_s + ongoing, 2)

    def fps(self) -> float:
        times = [t for t in self.frame_times if t > time.time() - 2.0]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0]) if times[-1] > times[0] else 0.0

    def latency_ms(self) -> dict:
        if not self.latencies_ms:
            return {"p50": None, "p95": None, "last": None}
        data = np.asarray(self.latencies_ms)
        return {"p50": round(float(np.percentile(data, 50)), 1), "p95": round(float(np.percentile(data, 95)), 1),
                "last": round(float(data[-1]), 1)}

    def stats(self) -> dict:
        latency = self.latency_ms()
        return {"type": "stats", "fps": round(self.fps(), 2), "frames": self.frames_sent,
                "dropped": self.channel.frames_dropped, "chunk_ms": self.last_chunk_ms and round(self.last_chunk_ms, 1),
                "control_latency_ms": latency["p50"], "control_latency": latency,
                "queue": self.channel.queued, "buffered": len(self.buffer),
                "target_fps": round(1.0 / self.interval_s, 2), "engine_keeping_up": self.interval_s <= FRAME_S * 1.01,
                "state": self.state, "late_chunks": self.late_chunks, "stalled_s": self.stalled_s(),
                **self._frame_costs()}

    def _frame_costs(self) -> dict:
        """Engine milliseconds per frame of the last chunk, split by stage."""
        t = self.last_timings
        if t is None:
            return {}
        n = max(1, self.chunk_frames)
        return {"model_ms_per_frame": round(t.model_ms / n, 2), "decode_ms_per_frame": round(t.decode_ms / n, 2),
                "jpeg_ms_per_frame": round(t.jpeg_ms / n, 2), "batch": t.batch_size}

    def summary(self) -> dict:
        s = self.stats()
        return {"id": self.id, "state": self.state, "fps": s["fps"], "frames": s["frames"], "drops": s["dropped"],
                "control_latency_ms": s["control_latency"], "chunk_ms": s["chunk_ms"], "prompt": self.params.prompt,
                "size": f"{self.params.width}*{self.params.height}", "age_s": round(time.time() - self.created_at, 1),
                "late_chunks": s["late_chunks"], "stalled_s": s["stalled_s"], "batch": s.get("batch")}

"""A session's playback policy: key timeline -> chunk requests, buffered frames -> 16 fps playback (pure; clock passed in).

Timing model. Chunk n covers a *control window* [R(n-1), R(n)) of time, where
R(n) is the moment chunk n is requested; the window is cut into the chunk's
frames and the key timeline is sampled on it (sub-frame accurate), so every
key edge lands in exactly one frame (`first_frame_reflecting`). A chunk is
requested when the frames already buffered run out within the expected round
trip (EMA of measured request -> frames time) plus one frame, plus any extra
lead the engine asked for (it needs a gap between chunks for other work):
late enough that the chunk reflects the newest keys, early enough that
playback does not stall. With one chunk in flight, key-to-screen latency is
about one chunk plus one round trip.

Trajectory. Each request's poses are kept as a top-down path (x, z per
frame and the heading at its end) and handed out with the chunk's first
frame when it is shown, so a mini-map follows what is on screen.

Pacing. One frame per interval: 1/16 s while the engine keeps up; when the
typical round trip (median of the last few) is longer than a chunk of video,
the interval stretches to round trip / frames per chunk (plus 2 %), so
playback slows evenly instead of stalling and bursting. A small lateness is caught up; after
a stall the clock restarts (no burst).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from inference.controls import CameraRig, KeyTimeline, first_frame_reflecting

FPS = 16
FRAME_S = 1.0 / FPS
STALL_AFTER_S = 0.5  # no frame to show for this long while generating -> "stalled"
RTT_GUESS_S = 0.3  # round trip assumed before the first measurement
RTT_WEIGHT = 0.3  # EMA weight of the newest round trip
RTT_MEDIAN_OF = 5  # round trips whose median decides the playback interval
MAX_EXTRA_LEAD_S = 1.0  # most extra lead an engine may ask for
SLOW_HEADROOM = 1.02  # a slowed interval is this much longer than the round trip allows, so the buffer refills


@dataclass(kw_only=True)
class ChunkRequest:
    """What the session asks the engine for: one chunk of poses over its control window."""

    seq: int  # request id, increasing over the session's life
    first_chunk: bool
    poses: np.ndarray  # (F, 4, 4) float64 camera-to-world
    keys: np.ndarray  # (F, 8) float32 held fraction per frame
    deadline: float  # when playback runs out of frames without this chunk
    requested_at: float
    first_frame: int  # frame number of the chunk's first frame in this stream


@dataclass(kw_only=True)
class PlayedFrame:
    """A frame whose time has come, with the control latencies it completes (seconds since each key edge)."""

    number: int
    payload: bytes
    latencies_s: list[float] = field(default_factory=list)
    path: dict | None = None  # the top-down path of the chunk this frame starts (see `path_of`)


def path_of(first_frame: int, poses: np.ndarray) -> dict:
    """Top-down path of a chunk: x, z per frame (world units) and the heading after it (degrees, 0 = +z, 90 = +x)."""
    forward = poses[-1, :3, 2]  # camera z axis in world coordinates
    heading = math.degrees(math.atan2(float(forward[0]), float(forward[2])))
    points = [[round(float(p[0, 3]), 3), round(float(p[2, 3]), 3)] for p in poses]
    return {"frame": first_frame, "points": points, "heading": round(heading, 1)}


class PlaybackPolicy:
    """Everything that decides when to ask for a chunk and when to show a frame, with no I/O and no clock."""

    def __init__(self, *, first_chunk_frames: int, chunk_frames: int, now: float):
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self.timeline = KeyTimeline()
        self.rig = CameraRig()
        self.state = "starting"  # starting | generating | stalled | ended (the world reached its length limit)
        self.seq = 0  # id of the next request
        self.rtt_ema_s = RTT_GUESS_S
        self.rtts: deque[float] = deque(maxlen=RTT_MEDIAN_OF)
        self.interval_s = FRAME_S
        self.extra_lead_s = 0.0
        self.late_chunks = 0
        self.stalled_total_s = 0.0
        self.stalled_at: float | None = None
        self.frame_times: deque[float] = deque(maxlen=64)
        self.frames_played = 0
        self.streaming = False
        self.restart(now)

    # -- input ------------------------------------------------------------

    def key(self, key: str, down: bool, t: float) -> None:
        """Record a key edge that arrived at t."""
        was_held = key in self.timeline.held(t)
        effective = self.timeline.edge(key, "down" if down else "up", t)
        if was_held != down:
            self._edges.append((effective, t))

    def release_keys(self, t: float) -> None:
        self.timeline.release_all(t)

    def look(self, yaw_deg: float, pitch_deg: float, t: float) -> float:
        """Queue a look delta that arrived at t; returns the degrees cut by the look backlog bound."""
        return self.timeline.look(yaw_deg, pitch_deg, t)

    def restart(self, now: float) -> None:
        """Forget the stream: the next chunk is a first chunk at the start pose (open, reset, engine restart)."""
        self.rig.reset()
        self.chunk_index = 0  # chunks requested since the stream (re)started
        self.frames_requested = 0  # frame number of the next frame to request
        self.in_flight: ChunkRequest | None = None
        self.last_request_at: float | None = None
        self.stream_started_at = now  # keys before this moment never reach the new stream
        self.buffer: deque[tuple[int, bytes]] = deque()
        self.next_due: float | None = None
        self._edges: list[tuple[float, float]] = []  # (effective time, arrival) not yet assigned to a frame
        self._targets: deque[tuple[int, float]] = deque()  # (frame number, arrival) awaiting display
        self._paths: deque[dict] = deque()  # paths of requested chunks whose first frame is not shown yet
        self._empty_since: float | None = now  # when the buffer last ran dry
        self.frames_left: int | None = None  # video frames the engine can still make (None: no limit)

    def start(self, now: float) -> None:
        """The world is open: chunks may be requested from now on."""
        self.streaming = True
        self.restart(now)

    def stop(self, now: float) -> None:
        """The engine is gone: nothing is in flight; playback stalls until `start`."""
        self.streaming = False
        self.in_flight = None
        if self.stalled_at is None:
            self.stalled_at = now
        self.state = "stalled"

    # -- requests -----------------------------------------------------------

    def _frames_for(self, chunk_index: int) -> int:
        return self.first_chunk_frames if chunk_index == 0 else self.chunk_frames

    def remaining_s(self, now: float) -> float:
        """Seconds of playback left in the buffer from now on."""
        if not self.buffer:
            return max(0.0, self.next_due - now) if self.next_due is not None else 0.0
        start = now if self.next_due is None or self.next_due < now - self.interval_s / 2 else max(now, self.next_due)
        return start - now + len(self.buffer) * self.interval_s

    def lead_s(self) -> float:
        """Playback left at which the next chunk is requested: a round trip, one frame of margin, the engine's ask."""
        return self.rtt_ema_s + self.interval_s + self.extra_lead_s

    def request(self, now: float) -> ChunkRequest | None:
        """The next chunk request when it is time for one (None otherwise)."""
        if not self.streaming or self.in_flight is not None or self.frames_left == 0:
            return None
        remaining = self.remaining_s(now)
        if self.chunk_index > 0 and remaining > self.lead_s():
            return None
        n = self._frames_for(self.chunk_index)
        t0 = self.last_request_at
        if t0 is None:
            t0 = max(self.stream_started_at, now - n * FRAME_S)
        t1 = max(now, t0 + 1e-6)
        keys = self.timeline.sample(t0, t1, n)  # (n, 8)
        first = self.chunk_index == 0
        if first:
            keys[0] = 0.0  # a stream's first frame is the start view at the start pose
        poses = self.rig.advance(keys)  # (n, 4, 4)
        self._assign_edges(t0, t1, n, first)
        self._paths.append(path_of(self.frames_requested, poses))
        req = ChunkRequest(seq=self.seq, first_chunk=first, poses=poses, keys=keys, deadline=now + remaining,
                           requested_at=now, first_frame=self.frames_requested)
        self.in_flight = req
        self.last_request_at = t1
        self.seq += 1
        self.chunk_index += 1
        self.frames_requested += n
        return req

    def unsent(self, req: ChunkRequest) -> None:
        """The request could not be sent (engine down): it is not in flight."""
        if self.in_flight is req:
            self.in_flight = None
            if self._paths and self._paths[-1]["frame"] == req.first_frame:
                self._paths.pop()

    def _assign_edges(self, t0: float, t1: float, n: int, first: bool) -> None:
        """Map this window's key edges to the first frame whose pose reflects them."""
        keep = []
        for effective, arrival in self._edges:
            j = first_frame_reflecting(effective, t0, t1, n)
            if j is None:
                keep.append((effective, arrival))
                continue
            if first:
                j = min(n - 1, max(j, 1))  # frame 0 of a first chunk is the start view
            self._targets.append((self.frames_requested + j, arrival))
        self._edges = keep

    # -- engine replies -----------------------------------------------------

    def on_chunk(self, seq: int, frames: list[bytes], now: float, extra_lead_s: float = 0.0,
                 frames_left: int | None = None) -> bool:
        """Buffer a generated chunk; False (ignored) when it answers a request from before a restart.

        `frames_left`: video frames the engine can still generate for this world (None: it has no limit).
        """
        req = self.in_flight
        if req is None or seq != req.seq:
            return False
        self.in_flight = None
        rtt = now - req.requested_at
        self.rtt_ema_s += RTT_WEIGHT * (rtt - self.rtt_ema_s)
        self.rtts.append(rtt)
        if not req.first_chunk and now > req.deadline:
            self.late_chunks += 1
        for i, frame in enumerate(frames):
            self.buffer.append((req.first_frame + i, frame))
        self.extra_lead_s = min(MAX_EXTRA_LEAD_S, max(0.0, extra_lead_s))
        self.frames_left = frames_left
        # Slow evenly: never play faster than one chunk per typical round trip.
        self.interval_s = max(FRAME_S, SLOW_HEADROOM * statistics.median(self.rtts) / max(1, len(frames)))
        return True

    # -- playback -----------------------------------------------------------

    def due_frame(self, now: float) -> PlayedFrame | None:
        """The frame to show now, if one is due (it leaves the buffer)."""
        if not self.buffer:
            return None
        if self.next_due is None or self.next_due < now - self.interval_s / 2:
            self.next_due = now  # (re)start the clock: a stall is not made up by a burst
        if now < self.next_due:
            return None
        number, payload = self.buffer.popleft()
        self.next_due += self.interval_s
        self.frames_played += 1
        self.frame_times.append(now)
        if not self.buffer:
            self._empty_since = now
        played = PlayedFrame(number=number, payload=payload)
        while self._targets and self._targets[0][0] <= number:
            played.latencies_s.append(now - self._targets.popleft()[1])
        while self._paths and self._paths[0]["frame"] <= number:
            played.path = self._paths.popleft()
        return played

    def replay(self, frames: list[bytes]) -> None:
        """Put frames shown before back at the head of the buffer (a resumed client never received them)."""
        if not frames:
            return
        if self.buffer:
            head = self.buffer[0][0]
        else:
            head = self.in_flight.first_frame if self.in_flight is not None else self.frames_requested
        self.buffer.extendleft((head - len(frames) + i, frame) for i, frame in reversed(list(enumerate(frames))))

    def next_wake(self, now: float, requesting: bool = True) -> float | None:
        """When the pacer must look again: the next frame is due or (`requesting`) the next request is."""
        times = []
        if self.buffer:
            restart = self.next_due is None or self.next_due < now - self.interval_s / 2
            times.append(now if restart else self.next_due)
        if requesting and self.streaming and self.in_flight is None and self.frames_left != 0:  # the buffer reaches the lead at a known time
            times.append(now + max(0.0, self.remaining_s(now) - self.lead_s()))
        return min(times) if times else None

    def reached_limit(self) -> None:
        """The engine refused a chunk for the world's length: request nothing more until a restart."""
        self.frames_left = 0
        self.in_flight = None

    def seconds_left(self, now: float) -> float | None:
        """Seconds of video this world can still show (the buffer plus what the engine can make); None: endless.

        Counted in frames at the model's 16 fps, not in playback time: a countdown that never goes up, even
        when a slow engine stretches the frame interval.
        """
        if self.frames_left is None:
            return None
        return (len(self.buffer) + self.frames_left) * FRAME_S

    def update_state(self, now: float, played: bool) -> str | None:
        """Move between generating, stalled and ended after a pacer tick; returns the new state when it changed."""
        if (not played and self.frames_left == 0 and not self.buffer and self.in_flight is None
                and self.state != "ended"):
            if self.stalled_at is not None:
                self.stalled_total_s += max(0.0, now - self.stalled_at)
                self.stalled_at = None
            self.state = "ended"  # not a stall: nothing more will come until a reset
            return self.state
        if played:
            if self.state == "generating":
                return None
            if self.stalled_at is not None:
                self.stalled_total_s += max(0.0, now - self.stalled_at)
                self.stalled_at = None
            self.state = "generating"
            return self.state
        if (self.state == "generating" and not self.buffer and self._empty_since is not None
                and now - self._empty_since > STALL_AFTER_S):
            self.state = "stalled"
            self.stalled_at = self._empty_since
            return self.state
        return None

    # -- reporting ----------------------------------------------------------

    def stalled_s(self, now: float) -> float:
        """Seconds without a frame to show after playback started (an ongoing stall included)."""
        ongoing = now - self.stalled_at if self.stalled_at is not None else 0.0
        return self.stalled_total_s + max(0.0, ongoing)

    def fps(self, now: float) -> float:
        """Frames shown per second over the last two seconds."""
        times = [t for t in self.frame_times if t > now - 2.0]
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    @property
    def keeping_up(self) -> bool:
        return self.interval_s <= FRAME_S * 1.01

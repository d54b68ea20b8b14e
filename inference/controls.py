"""Key edges -> per-frame held fractions -> camera-to-world poses (pure numpy, no I/O).

A session's `KeyTimeline` records key edges stamped with their arrival time
(float seconds, one clock per session). `KeyTimeline.sample(t0, t1, n)` cuts
[t0, t1) into n equal frame intervals and returns, per frame and per key
(columns `KEY_ORDER` = w,a,s,d,i,j,k,l), the fraction of the interval during
which the key was effectively held. `CameraRig.advance` integrates those
fractions into one pose per frame, with the step sizes of the reference
trajectory builder (`wasd_ijkl_to_c2ws.py`), defined per frame at 16 fps.

Frame alignment. Row k of a sample covers [t0 + k*dt, t0 + (k+1)*dt) and
`advance` returns the pose *after* applying row k, so the frame k pose
already reflects every edge inside its own interval (sub-frame: an edge at
the middle of frame k moves that frame by half a step). A key edge at time
t is therefore first reflected by frame floor((t - t0) / dt) of the sample
containing t (`first_frame_reflecting`). The reference trajectory is
`[identity] + [pose after key row i]`; a session's first chunk is built the
same way: frame 0 (the start image) has the identity pose and no keys, the
following frames come from `advance`.

Timeline rules:
- Opposite keys (w/s, a/d, i/k, j/l) held together: the newest press wins;
  the older one counts again once the newer one is released.
- A repeated `down` of a held key (auto-repeat) keeps the original press
  time; an `up` of a key that is not held changes nothing.
- Edges may arrive out of order; they are replayed in time order (ties in
  arrival order). An edge stamped before the end of the last sampled range
  (the horizon: those frames are already committed) is moved to the
  horizon; a release whose press was moved keeps the held duration (it is
  moved by the same amount), so a late tap still moves the camera.
- Memory is bounded: sampling folds every edge at or before the sample's
  t0 into a per-key state, and at most `max_events` edges are kept (a flood
  folds the oldest ones, so the final state is always right; only the
  sub-frame timing of the folded edges is lost). Sampling ranges are meant
  to move forward; a range before the folded state is answered from it.

Look deltas (mouse, gamepad) become look-key frames: a turn of x degrees
is x / 2 frames of the look key (2 degrees per frame), queued per axis
after the turn still pending and played from the frame the delta arrived
in (`LookTrack`), so a sample holds look-key fractions like any key press
and `act` models see key states. A look adds to the keys of its axis within
a frame, clipped to one full key (a key held the same way leaves no room).
"""

from __future__ import annotations

import bisect
import math

import numpy as np

KEY_ORDER = ("w", "a", "s", "d", "i", "j", "k", "l")
KEY_INDEX = {key: i for i, key in enumerate(KEY_ORDER)}
KEY_ALIASES = {"arrowup": "i", "arrowdown": "k", "arrowleft": "j", "arrowright": "l"}
# Column pairs that cancel each other: forward/back, left/right, up/down, yaw left/right.
OPPOSITE_PAIRS = ((0, 2), (1, 3), (4, 6), (5, 7))

FPS = 16
MOVE_PER_FRAME = 0.05  # world units per frame of W/A/S/D at 16 fps
TURN_DEG_PER_FRAME = 2.0  # degrees per frame of I/J/K/L at 16 fps
PITCH_LIMIT_DEG = 85.0
MAX_EVENTS = 256
LOOK_BACKLOG_FRAMES = 32  # look-key frames queued per axis (64 degrees, 2 s of turning); more is cut and counted
# Look axes as (column of the positive direction, column of the negative one): yaw right l / left j, pitch up i / down k.
LOOK_AXES = ((7, 5), (4, 6))


def canonical_key(name: str) -> str:
    """Map a key name (any case, arrow aliases allowed) to one of w,a,s,d,i,j,k,l."""
    key = str(name).strip().lower()
    key = KEY_ALIASES.get(key, key)
    if key not in KEY_INDEX:
        allowed = ", ".join(KEY_ORDER + tuple(KEY_ALIASES))
        raise ValueError(f"unknown key {name!r}: expected one of {allowed}")
    return key


def first_frame_reflecting(t_edge: float, t0: float, t1: float, n: int) -> int | None:
    """Index of the first of the n frames sampled over [t0, t1) whose pose reflects an edge at t_edge.

    An edge before t0 is reflected from frame 0 on (if an earlier sample did
    not already reflect it); an edge at or after t1 by none of these frames.
    """
    if n < 1 or not t1 > t0:
        raise ValueError(f"need n >= 1 and t1 > t0, got n={n}, t0={t0}, t1={t1}")
    if t_edge >= t1:
        return None
    if t_edge < t0:
        return 0
    return min(n - 1, int((t_edge - t0) * n / (t1 - t0)))


# A press is identified by (time, arrival sequence number): the larger one is newer.
_Press = tuple[float, int]


class KeyTimeline:
    """Per-session record of key edges, resampled onto frame intervals."""

    def __init__(self, *, max_events: int = MAX_EVENTS):
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        self.max_events = max_events
        self._base: list[_Press | None] = [None] * len(KEY_ORDER)  # state at _base_time
        self._base_time = -math.inf
        self._events: list[tuple[float, int, int, bool]] = []  # (t, seq, key column, down), sorted
        self._seq = 0
        self._horizon = -math.inf  # end of the last sampled range
        self._press_shift = [0.0] * len(KEY_ORDER)  # delay applied to each key's last late press
        self.folded_by_cap = 0  # edges folded early because of the cap (flood counter)
        self.looks = LookTrack(max_runs=max_events)

    @property
    def event_count(self) -> int:
        return len(self._events)

    def edge(self, key: str, action: str, t: float) -> float:
        """Record `action` ("down"/"up") of `key` arriving at t; return the time it takes effect."""
        column = KEY_INDEX[canonical_key(key)]
        if action not in ("down", "up"):
            raise ValueError(f"key action {action!r}: expected 'down' or 'up'")
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"key edge time {t!r} is not a finite number")
        down = action == "down"
        if down:
            shift = max(0.0, self._horizon - t)
            if self._state_at(t + shift)[column] is None:  # a new press, not an auto-repeat
                self._press_shift[column] = shift
            t += shift
        else:
            # The release keeps the delay its press got, so the hold keeps its length.
            t = max(t + self._press_shift[column], self._horizon)
            self._press_shift[column] = 0.0
        self._insert((t, self._seq, column, down))
        return t

    def press(self, key: str, t: float) -> float:
        return self.edge(key, "down", t)

    def release(self, key: str, t: float) -> float:
        return self.edge(key, "up", t)

    def release_all(self, t: float) -> None:
        """Release every key at t and drop look time not played by then (focus lost, reset, disconnect)."""
        for key in KEY_ORDER:
            self.edge(key, "up", t)
        self.looks.stop()

    def look(self, yaw_deg: float, pitch_deg: float, t: float) -> float:
        """Queue a look delta arriving at t (yaw right and pitch up positive); returns the degrees cut by the cap."""
        return self.looks.add(yaw_deg, pitch_deg, max(float(t), self._horizon))

    def held(self, t: float) -> set[str]:
        """Keys effectively held at time t (after newest-wins between opposite keys)."""
        presses = self._state_at(t)
        active = _effective(presses)
        return {KEY_ORDER[c] for c in range(len(KEY_ORDER)) if active[c]}

    def sample(self, t0: float, t1: float, n: int) -> np.ndarray:
        """(n, 8) float32: fraction of each of n equal frame intervals of [t0, t1) each key was held."""
        if n < 1 or not t1 > t0 or not (math.isfinite(t0) and math.isfinite(t1)):
            raise ValueError(f"need n >= 1 and finite t1 > t0, got n={n}, t0={t0}, t1={t1}")
        presses = self._state_at(t0)
        starts, states = [t0], [_effective(presses)]
        for t, seq, column, down in self._events:
            if t <= t0:
                continue
            if t >= t1:
                break
            if _apply(presses, t, seq, column, down):
                starts.append(t)
                states.append(_effective(presses))
        seg_start = np.asarray(starts)
        seg_end = np.append(seg_start[1:], t1)
        frame_edges = t0 + (t1 - t0) * np.arange(n + 1) / n
        # (segments, frames) overlap of each constant-state segment with each frame interval
        overlap = np.minimum(seg_end[:, None], frame_edges[None, 1:]) - np.maximum(
            seg_start[:, None], frame_edges[None, :-1])
        overlap = np.clip(overlap, 0.0, None)
        fractions = overlap.T @ np.asarray(states, dtype=np.float64) / ((t1 - t0) / n)
        fractions = _add_looks(np.clip(fractions, 0.0, 1.0), self.looks.sample(t0, t1, n))
        self._fold_until(t0)
        self._horizon = max(self._horizon, t1)
        return fractions.astype(np.float32)

    def _insert(self, event: tuple[float, int, int, bool]) -> None:
        self._seq += 1
        bisect.insort(self._events, event)
        overflow = len(self._events) - self.max_events
        if overflow > 0:
            self.folded_by_cap += overflow
            self._fold_until(self._events[overflow - 1][0], count=overflow)

    def _fold_until(self, t: float, *, count: int | None = None) -> None:
        """Fold edges at or before t (or the oldest `count`) into the base state."""
        keep = 0
        for t_e, seq, column, down in self._events:
            if (count is not None and keep >= count) or (count is None and t_e > t):
                break
            _apply(self._base, t_e, seq, column, down)
            keep += 1
        del self._events[:keep]
        self._base_time = max(self._base_time, t)

    def _state_at(self, t: float) -> list[_Press | None]:
        presses = list(self._base)
        for t_e, seq, column, down in self._events:
            if t_e > t:
                break
            _apply(presses, t_e, seq, column, down)
        return presses


class LookTrack:
    """Look deltas as runs of look-key frames per axis (x degrees = x / 2 frames), played at one key per frame.

    A run starts at the frame containing its arrival or where the previous
    run ends, whichever is later, so a delta is turned whole however long
    the sampled frames are. A delta against the queued direction cancels
    queued turn first (right then back nets out). At most
    `LOOK_BACKLOG_FRAMES` wait per axis and `max_runs` runs; the rest of a
    delta is cut (`cut_deg` counts it).
    """

    def __init__(self, *, max_runs: int = MAX_EVENTS):
        self.max_runs = max_runs
        self._runs: tuple[list[list], ...] = ([], [])  # per axis: [arrival time, frames left, column], in order
        self.cut_deg = 0.0

    def add(self, yaw_deg: float, pitch_deg: float, t: float) -> float:
        """Queue a delta arriving at t; returns the degrees cut."""
        cut = 0.0
        for runs, (positive, negative), delta in zip(self._runs, LOOK_AXES, (yaw_deg, pitch_deg)):
            delta = float(delta)
            if not math.isfinite(delta) or not math.isfinite(t):
                raise ValueError(f"look delta {delta!r} at {t!r}: expected finite numbers")
            if delta:
                cut += self._queue(runs, positive if delta > 0 else negative, abs(delta) / TURN_DEG_PER_FRAME, t)
        self.cut_deg += cut
        return cut

    def _queue(self, runs: list[list], column: int, frames: float, t: float) -> float:
        if runs and runs[-1][2] != column:  # cancel the queued turn the other way first
            take = min(frames, runs[-1][1])
            runs[-1][1] -= take
            frames -= take
            if runs[-1][1] <= 1e-9:
                runs.pop()
        if frames <= 0:
            return 0.0
        room = max(0.0, LOOK_BACKLOG_FRAMES - sum(run[1] for run in runs))
        if len(runs) >= self.max_runs and not (runs and runs[-1][2] == column):
            room = 0.0
        played = min(frames, room)
        if played > 0:
            if runs and runs[-1][2] == column:
                runs[-1][1] += played
            else:
                runs.append([t, played, column])
        return (frames - played) * TURN_DEG_PER_FRAME

    def stop(self) -> None:
        """Drop every turn not played yet."""
        for runs in self._runs:
            runs.clear()

    def sample(self, t0: float, t1: float, n: int) -> np.ndarray:
        """(n, 8) look-key fraction of each of n equal frames of [t0, t1); what is played leaves the queue."""
        out = np.zeros((n, len(KEY_ORDER)))
        dt = (t1 - t0) / n
        edges = np.arange(n + 1, dtype=np.float64)
        for runs in self._runs:
            cursor = 0.0  # in frames of this sample
            while runs and runs[0][0] < t1 and cursor < n:
                run = runs[0]
                start = max(cursor, (run[0] - t0) / dt)
                end = min(float(n), start + run[1])
                overlap = np.minimum(end, edges[1:]) - np.maximum(start, edges[:-1])
                out[:, run[2]] += np.clip(overlap, 0.0, None)
                run[1] -= end - start
                cursor = end
                if run[1] > 1e-9:
                    run[0] = t1  # the rest plays from the next sample on
                    break
                runs.pop(0)
        return np.minimum(out, 1.0)

    @property
    def pending_deg(self) -> float:
        return sum(run[1] for runs in self._runs for run in runs) * TURN_DEG_PER_FRAME


def _add_looks(keys: np.ndarray, looks: np.ndarray) -> np.ndarray:
    """Add look fractions to key fractions per axis (net turn per frame within one full key); (n, 8)."""
    if not looks.any():
        return keys
    out = keys.copy()
    for positive, negative in LOOK_AXES:
        turning = (looks[:, positive] > 0) | (looks[:, negative] > 0)
        net = np.clip(keys[:, positive] - keys[:, negative] + looks[:, positive] - looks[:, negative], -1.0, 1.0)
        out[turning, positive] = np.maximum(net, 0.0)[turning]
        out[turning, negative] = np.maximum(-net, 0.0)[turning]
    return out


def _apply(presses: list[_Press | None], t: float, seq: int, column: int, down: bool) -> bool:
    """Apply one edge in place; return whether the raw key state changed."""
    if down and presses[column] is None:
        presses[column] = (t, seq)
        return True
    if not down and presses[column] is not None:
        presses[column] = None
        return True
    return False  # auto-repeat down or release of a key that is not held


def _effective(presses: list[_Press | None]) -> list[float]:
    """1.0 for each key that moves the camera: held, and not overridden by a newer opposite press."""
    active = [0.0 if p is None else 1.0 for p in presses]
    for a, b in OPPOSITE_PAIRS:
        if presses[a] is not None and presses[b] is not None:
            active[a if presses[a] < presses[b] else b] = 0.0
    return active


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _flat_unit(v: np.ndarray) -> np.ndarray:
    """Project onto the horizontal (x, z) plane and normalise the way the reference does."""
    flat = np.array([v[0], 0.0, v[2]])
    norm = np.linalg.norm(flat)
    # The reference divides by (norm + 1e-6); kept so trajectories match it to 1e-9.
    return flat / (norm + 1e-6) if norm > 0 else flat


class CameraRig:
    """Integrates per-frame key fractions into camera-to-world poses (OpenCV axes: x right, y down, z forward).

    Per full frame: W/S move +/- `move_per_frame` along the flattened forward
    axis, D/A along the flattened right axis, L/J yaw +/- `turn_deg_per_frame`
    about world y, I/K pitch +/- `turn_deg_per_frame` about the camera x
    axis; rotation first (`R_new = R_yaw @ R @ R_pitch`), then translation
    along the new axes, as the reference does. A fraction f scales the step.
    Pitch is clamped to +/-`pitch_limit_deg`: a step that would cross the
    limit stops at it (the reference drops such a step whole; the two agree
    whenever the limit is not reached).
    """

    def __init__(self, *, move_per_frame: float = MOVE_PER_FRAME,
                 turn_deg_per_frame: float = TURN_DEG_PER_FRAME,
                 pitch_limit_deg: float = PITCH_LIMIT_DEG):
        self.move_per_frame = move_per_frame
        self.turn_per_frame = np.deg2rad(turn_deg_per_frame)
        self.pitch_limit = np.deg2rad(pitch_limit_deg)
        self.reset()

    def reset(self) -> None:
        """Back to the start pose (identity, level)."""
        self._pose = np.eye(4)
        self._pitch = 0.0

    @property
    def pose(self) -> np.ndarray:
        """(4, 4) float64 current camera-to-world pose (a copy)."""
        return self._pose.copy()

    @property
    def pitch_deg(self) -> float:
        return float(np.rad2deg(self._pitch))

    def advance(self, keys: np.ndarray) -> np.ndarray:
        """(n, 8) held fractions (columns w,a,s,d,i,j,k,l) -> (n, 4, 4) float64 pose after each frame."""
        keys = np.asarray(keys, dtype=np.float64)
        if keys.ndim != 2 or keys.shape[1] != len(KEY_ORDER):
            raise ValueError(f"keys shape {keys.shape}: expected (frames, 8) columns w,a,s,d,i,j,k,l")
        poses = np.empty((len(keys), 4, 4))
        for n, (w, a, s, d, i, j, k, l) in enumerate(keys):
            poses[n] = self._step(w - s, d - a, i - k, l - j)
        return poses

    def _step(self, forward: float, right: float, pitch_up: float, yaw_right: float) -> np.ndarray:
        pitch_delta = self.turn_per_frame * pitch_up
        new_pitch = self._pitch + pitch_delta
        if abs(new_pitch) > self.pitch_limit:
            new_pitch = math.copysign(self.pitch_limit, new_pitch)
            pitch_delta = new_pitch - self._pitch
        self._pitch = new_pitch
        yaw_delta = self.turn_per_frame * yaw_right
        rotation = _rotation_y(yaw_delta) @ self._pose[:3, :3] @ _rotation_x(pitch_delta)
        move = (_flat_unit(rotation[:, 2]) * (self.move_per_frame * forward)
                + _flat_unit(rotation[:, 0]) * (self.move_per_frame * right))
        pose = np.eye(4)
        pose[:3, :3] = rotation
        pose[:3, 3] = self._pose[:3, 3] + move
        self._pose = pose
        return pose.copy()

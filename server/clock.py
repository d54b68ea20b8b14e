"""A world's clock: wall time less the time the world spent detached (it stands still while detached)."""

from __future__ import annotations

import time


class WorldClock:
    """Callable like `time.time`; `pause()` freezes it and `resume()` carries on from where it stood.

    A world's key timeline, chunk windows and playback all run on this clock,
    so a world kept during a dropped connection continues exactly where it
    stopped: the control window that was open at the drop goes on after the
    resume as if no time had passed. `to_wall` turns one of its times back
    into wall time (the engine schedules by wall-clock deadlines).
    """

    def __init__(self, wall=time.time):
        self.wall = wall
        self.paused_total_s = 0.0
        self.paused_at: float | None = None  # wall time of the pause in progress

    def __call__(self) -> float:
        now = self.wall() if self.paused_at is None else self.paused_at
        return now - self.paused_total_s

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def pause(self) -> None:
        if self.paused_at is None:
            self.paused_at = self.wall()

    def resume(self) -> float:
        """Run again; returns the seconds it stood still."""
        if self.paused_at is None:
            return 0.0
        stood = max(0.0, self.wall() - self.paused_at)
        self.paused_total_s += stood
        self.paused_at = None
        return stood

    def to_wall(self, t: float) -> float:
        """Wall time of world time t (while running)."""
        return t + self.paused_total_s

"""Circuit breaker: stop calling a failing upsampler for a cool-down, then try once."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Counts consecutive failures; opens after `threshold` of them for `cooldown_s`.

    closed: calls go through. open: calls are refused until the cool-down ends.
    half_open: the cool-down ended; one trial call goes through, its outcome
    closes or re-opens the breaker.
    """

    def __init__(self, *, threshold: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.consecutive_failures = 0
        self.times_opened = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self.cooldown_s:
            return "open"
        return "half_open"

    def allow(self) -> bool:
        """Whether a call may go out now; in half_open only one trial at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        self._trial_in_flight = False
        if self._opened_at is not None or self.consecutive_failures >= self.threshold:
            self._opened_at = self._clock()
            self.times_opened += 1

    def abandon(self) -> None:
        """The allowed call ended without an outcome (cancelled): free the trial slot."""
        self._trial_in_flight = False

    def retry_in_s(self) -> float:
        """Seconds until the next trial call is allowed (0 when not open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def snapshot(self) -> dict:
        return {
            "state": self.state,
            "consecutive_failures": self.consecutive_failures,
            "threshold": self.threshold,
            "retry_in_s": round(self.retry_in_s(), 3),
            "times_opened": self.times_opened,
        }

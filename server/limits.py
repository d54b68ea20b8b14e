"""Per-connection budgets: a token bucket per kind of request, and flood detection on top of the message bucket."""

from __future__ import annotations

import time

ABUSE_WINDOW_S = 5.0  # refusals counted over this window decide a flood
REPORT_EVERY_S = 1.0  # at most one `rate_limited` error per second per budget


class TokenBucket:
    """`rate` tokens per second up to `burst`; `take` spends one when there is one."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket rate {rate} / burst {burst}: expected rate > 0 and burst >= 1")
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.stamp = clock()
        self._reported_at = -float("inf")

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def should_report(self) -> bool:
        """True at most once per REPORT_EVERY_S: refusals are told, not one error per refused message."""
        now = self.clock()
        if now - self._reported_at >= REPORT_EVERY_S:
            self._reported_at = now
            return True
        return False


class MessageBudget(TokenBucket):
    """All messages of a connection; sustained refusals (more than `rate` per second over 5 s) are a flood."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        super().__init__(rate, burst, clock)
        self.refusals: list[float] = []

    def take(self) -> bool:
        if super().take():
            return True
        now = self.clock()
        self.refusals = [t for t in self.refusals if t > now - ABUSE_WINDOW_S]
        self.refusals.append(now)
        return False

    @property
    def abusive(self) -> bool:
        return len(self.refusals) > self.rate * ABUSE_WINDOW_S

"""Learn each signature's batch limit from measured step times: grow while batching pays, shrink when it does not.

Pure bookkeeping (no clock, no engine): the loop feeds it one measurement per
step, so tests can feed it numbers. Per (signature, batch size) it keeps an EMA
of the step time. The limit starts at 1. Every `probe_every` steps at the limit
it asks for `min_samples` steps one size larger (a probe). The limit grows to
b+1 when time(b+1)/(b+1) beats time(b)/b by `margin` and the probe kept every
session on time; it falls back to b-1 when time(b)/b no longer beats
time(b-1)/(b-1) by `margin`, or when a step of size b made a session late that
a step of one session would have kept on time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EMA_WEIGHT = 0.3  # weight of the newest measurement
PAY_MARGIN = 0.05  # a bigger batch must cut the time per session by 5 %
MIN_SAMPLES = 3  # measurements of a size before its estimate is trusted
PROBE_EVERY = 20  # steps at the limit between probes of limit + 1


@dataclass(kw_only=True)
class StepEstimate:
    """Measured step time of one (signature, batch size)."""

    ema_s: float
    samples: int = 1
    late: bool = False  # the latest step of this size made a session late


@dataclass(kw_only=True)
class SignatureBatching:
    """What has been learned about one signature."""

    limit: int = 1
    steps: dict[int, StepEstimate] = field(default_factory=dict)  # batch size -> estimate
    since_probe: int = 0  # steps at the limit since the last probe
    probe_left: int = 0  # probe steps still wanted at limit + 1
    batches: int = 0
    late_batches: int = 0


class BatchLearner:
    """Per-signature batch limits learned from step times, capped at `max_batch`."""

    def __init__(self, *, max_batch: int = 8, margin: float = PAY_MARGIN, min_samples: int = MIN_SAMPLES,
                 probe_every: int = PROBE_EVERY):
        if max_batch < 1:
            raise ValueError(f"max_batch {max_batch}: expected at least 1")
        self.max_batch = max_batch
        self.margin = margin
        self.min_samples = min_samples
        self.probe_every = probe_every
        self.signatures: dict[str, SignatureBatching] = {}

    def _state(self, signature: str) -> SignatureBatching:
        state = self.signatures.get(signature)
        if state is None:
            state = self.signatures[signature] = SignatureBatching()
        return state

    def limit(self, signature: str) -> int:
        """The learned batch limit (1 for a signature never measured)."""
        state = self.signatures.get(signature)
        return state.limit if state else 1

    def batch_cap(self, signature: str) -> int:
        """How many sessions the next step may take: the limit, or limit + 1 while probing."""
        state = self._state(signature)
        if state.limit >= self.max_batch:
            return state.limit
        if state.probe_left == 0:
            at_limit = state.steps.get(state.limit)
            trusted = at_limit is not None and at_limit.samples >= self.min_samples
            if trusted and (state.limit + 1 not in state.steps or state.since_probe >= self.probe_every):
                state.probe_left = self.min_samples
        return state.limit + 1 if state.probe_left else state.limit

    def expected_s(self, signature: str, size: int) -> float | None:
        """Estimated step time for `size` sessions: measured, else scaled from the nearest measured size."""
        state = self.signatures.get(signature)
        if not state or not state.steps:
            return None
        known = state.steps.get(size)
        if known is not None:
            return known.ema_s
        nearest = min(state.steps, key=lambda b: abs(b - size))
        return state.steps[nearest].ema_s * size / nearest

    def per_session_s(self, signature: str) -> float | None:
        """Step time per session at the learned limit (None before any measurement)."""
        limit = self.limit(signature)
        t = self.expected_s(signature, limit)
        return None if t is None else t / limit

    def record(self, signature: str, size: int, seconds: float, slack_s: float) -> None:
        """One step of `size` sessions took `seconds`; `slack_s` was the tightest deadline minus the start."""
        if size < 1 or seconds < 0:
            raise ValueError(f"step of {size} sessions in {seconds} s: expected size >= 1 and seconds >= 0")
        state = self._state(signature)
        alone = self.expected_s(signature, 1)
        est = state.steps.get(size)
        if est is None:
            est = state.steps[size] = StepEstimate(ema_s=seconds)
        else:
            est.ema_s += EMA_WEIGHT * (seconds - est.ema_s)
            est.samples += 1
        # Late because of batching: a step of one session would have made it in time.
        est.late = size > 1 and seconds > slack_s and (alone is None or alone <= slack_s)
        state.batches += 1
        state.late_batches += est.late
        if size > state.limit:
            state.probe_left = max(0, state.probe_left - 1)
            state.since_probe = 0
        elif size == state.limit:
            state.since_probe += 1
        self._adjust(state, size)

    def _per_session(self, state: SignatureBatching, size: int) -> float | None:
        est = state.steps.get(size)
        if est is None or est.samples < self.min_samples:
            return None
        return est.ema_s / size

    def _adjust(self, state: SignatureBatching, size: int) -> None:
        limit = state.limit
        if state.steps[size].late and size <= limit:
            state.limit = max(1, size - 1)
            state.probe_left = 0
            return
        here, below = self._per_session(state, limit), self._per_session(state, limit - 1)
        if limit > 1 and here is not None and below is not None and here > below * (1 - self.margin):
            state.limit = limit - 1  # stopped paying
            return
        above = self._per_session(state, limit + 1)
        if (limit < self.max_batch and here is not None and above is not None
                and above < here * (1 - self.margin) and not state.steps[limit + 1].late):
            state.limit = limit + 1
            state.probe_left = 0
            state.since_probe = 0

    def snapshot(self, signature: str) -> dict:
        """Learned limit, step-time estimates (ms by batch size) and counters of one signature."""
        state = self._state(signature)
        return {"batch_limit": state.limit,
                "step_ms": {b: round(e.ema_s * 1000, 2) for b, e in sorted(state.steps.items())},
                "batches": state.batches, "late_batches": state.late_batches}


def signature_loads(learner: BatchLearner, sizes: dict[str, str], sessions: dict[str, int],
                    chunk_period_s: float) -> list[dict]:
    """Heartbeat view per signature: learned limit, step times, and sessions it could hold alone.

    Capacity = chunk period (seconds of video one chunk plays) / step time per
    session at the learned limit: how many sessions of this signature alone
    keep up with playback.
    """
    loads = []
    for signature, size in sizes.items():
        per_session = learner.per_session_s(signature)
        capacity = None if not per_session else round(chunk_period_s / per_session, 3)
        loads.append({"signature": signature, "size": size, "sessions": sessions.get(signature, 0),
                      "session_ms": None if per_session is None else round(per_session * 1000, 2),
                      "capacity": capacity, **learner.snapshot(signature)})
    return loads

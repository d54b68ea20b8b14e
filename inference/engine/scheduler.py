"""Pick the next chunk(s) to generate: earliest playback deadline first, due same-signature sessions batched."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inference.engine.batching import BatchLearner
from inference.protocol import StepChunk


@dataclass(kw_only=True)
class PendingStep:
    """A chunk request waiting in the engine, with the time it arrived."""

    request: StepChunk
    signature: str
    arrived_at: float
    penalty_s: float = 0.0  # engine time its world's own forced tasks took: ranked this much later (its stream pays)

    @property
    def rank_deadline(self) -> float:
        return self.request.deadline + self.penalty_s


@dataclass(kw_only=True)
class ChunkScheduler:
    """Holds at most one pending chunk per session (a newer request replaces an older one).

    Bounded by the number of open sessions. `next_batch` takes the request with
    the earliest deadline (plus its penalty: time the session's own forced tasks
    took, so that its stream rather than the others absorbs them; ties: the
    signature that is cheaper per session, then the earliest arrival) and adds pending requests of the same signature, never
    another one, up to the signature's learned batch cap, as long as each is due
    and adding it keeps the head on time.
    """

    learner: BatchLearner = field(default_factory=BatchLearner)
    pending: dict[str, PendingStep] = field(default_factory=dict)

    def submit(self, step: PendingStep) -> PendingStep | None:
        """Queue a request; returns the request it replaced, if any (the caller reports it)."""
        old = self.pending.get(step.request.session_id)
        self.pending[step.request.session_id] = step
        return old

    def drop_session(self, session_id: str) -> None:
        self.pending.pop(session_id, None)

    def __len__(self) -> int:
        return len(self.pending)

    def _priority(self, step: PendingStep) -> tuple[float, float, float]:
        cost = self.learner.per_session_s(step.signature)
        return step.rank_deadline, cost if cost is not None else 0.0, step.arrived_at

    def next_batch(self, now: float | None = None) -> list[PendingStep]:
        """Remove and return the next batch to run (empty when nothing is pending)."""
        if not self.pending:
            return []
        now = time.time() if now is None else now
        ordered = sorted(self.pending.values(), key=self._priority)
        head = ordered[0]
        cap = self.learner.batch_cap(head.signature)
        batch = [head]
        for step in ordered[1:]:
            if len(batch) >= cap:
                break
            if step.signature != head.signature:
                continue
            if not self._may_join(head, step, len(batch) + 1, now):
                break  # later requests are due even later
            batch.append(step)
        for step in batch:
            del self.pending[step.request.session_id]
        return batch

    def _may_join(self, head: PendingStep, step: PendingStep, size: int, now: float) -> bool:
        """Due (its frames run out before a following step could end) and the head stays on time."""
        t_size = self.learner.expected_s(head.signature, size)
        if t_size is None:
            return True  # nothing measured yet: the cap (1 at first) decides
        if step.request.deadline > now + 2 * t_size:
            return False
        t_alone = self.learner.expected_s(head.signature, 1) or 0.0
        head_late_anyway = now + t_alone > head.request.deadline
        return head_late_anyway or now + t_size <= head.request.deadline

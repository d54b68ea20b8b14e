"""Pick the next chunk(s) to generate: earliest playback deadline first, same-signature batches."""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.protocol import StepChunk


@dataclass(kw_only=True)
class PendingStep:
    """A chunk request waiting in the engine, with the time it arrived."""

    request: StepChunk
    signature: str
    arrived_at: float


@dataclass(kw_only=True)
class ChunkScheduler:
    """Holds at most one pending chunk per session (a newer request replaces an older one).

    Bounded by the number of open sessions. `next_batch` returns the request with
    the earliest deadline plus other pending requests of the same signature, up to
    `max_batch` (per-signature batch limits are learned by the engine loop).
    """

    max_batch: int = 1
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

    def next_batch(self, batch_limit: dict[str, int] | None = None) -> list[PendingStep]:
        """Remove and return the next batch to run (empty when nothing is pending)."""
        if not self.pending:
            return []
        ordered = sorted(self.pending.values(), key=lambda s: (s.request.deadline, s.arrived_at))
        head = ordered[0]
        limit = (batch_limit or {}).get(head.signature, self.max_batch)
        batch = [s for s in ordered if s.signature == head.signature][: max(1, limit)]
        for s in batch:
            del self.pending[s.request.session_id]
        return batch

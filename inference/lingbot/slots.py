"""DiT cache slots shared by the sessions of one batching signature, grown one slot at a time."""

from __future__ import annotations

from inference.models.dit import CausalDiT
from inference.models.kv_cache import DiTCache


class SlotPool:
    """One DiTCache (window mode) whose slots are lent to sessions; a batch reads several slots at once.

    Allocation grows the cache by exactly one slot when none is free (a copy
    of the existing slots, done only when a session opens), so memory tracks
    the number of open sessions; a freed slot is reused by the next session.
    """

    def __init__(self, dit: CausalDiT, *, frame_seqlen: int, window: int, sink: int):
        self.dit = dit
        self.frame_seqlen = frame_seqlen
        self.window = window
        self.sink = sink
        self.cache: DiTCache | None = None
        self.free: list[int] = []
        self.used: set[int] = set()

    def __len__(self) -> int:
        return len(self.used)

    @property
    def capacity(self) -> int:
        return 0 if self.cache is None else self.cache.capacity

    def acquire(self) -> int:
        """A clean slot (empty KV window, no prompt yet)."""
        if not self.free:
            self._grow()
        slot = min(self.free)
        self.free.remove(slot)
        self.used.add(slot)
        self.cache.reset(slot)
        self.cache.text.ready[slot] = False
        return slot

    def release(self, slot: int) -> None:
        if slot in self.used:
            self.used.remove(slot)
            self.free.append(slot)

    def _grow(self) -> None:
        old = self.cache
        new = self.dit.new_cache(capacity=self.capacity + 1, frame_seqlen=self.frame_seqlen,
                                 local_attn_size=self.window, sink_size=self.sink)
        if old is not None:
            n = old.capacity
            for store_new, store_old in ((new.self_kv.k, old.self_kv.k), (new.self_kv.v, old.self_kv.v),
                                         (new.text.k, old.text.k), (new.text.v, old.text.v)):
                store_new[:, :n].copy_(store_old)  # (layers, slots, tokens, heads, head_dim)
            new.self_kv.global_end[:n] = old.self_kv.global_end
            new.self_kv.local_end[:n] = old.self_kv.local_end
            new.text.ready[:n] = old.text.ready
        self.cache = new
        self.free.append(new.capacity - 1)

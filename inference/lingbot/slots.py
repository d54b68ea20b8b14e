"""DiT cache slots shared by the sessions of one batching signature, grown one slot at a time, never two copies."""

from __future__ import annotations

import torch

from inference.models.dit import CausalDiT
from inference.models.kv_cache import DiTCache

HOST = torch.device("cpu")


class SlotPool:
    """One DiTCache (window mode) whose slots are lent to sessions; a batch reads several slots at once.

    Allocation grows the cache by exactly one slot when none is free, done
    only when a session opens, so memory tracks the number of open sessions;
    a freed slot is reused by the next session. Growing never holds two
    copies of the cache on its device: the held slots are first moved to
    host memory (the old device tensors freed), then the bigger cache is
    allocated and the slots copied back.
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
        old, self.cache = self.cache, None
        held = 0 if old is None else old.capacity
        if old is not None:
            stage_to_host(old)  # the device now holds no copy of the old slots
        new = self.dit.new_cache(capacity=held + 1, frame_seqlen=self.frame_seqlen, local_attn_size=self.window,
                                 sink_size=self.sink)
        if old is not None:
            copy_slots(old, new)
        self.cache = new
        self.free.append(held)


def per_slot_state(cache: DiTCache):
    """(owner, attribute name, value) of every per-slot field: (layers, slots, ...) tensors and per-slot lists."""
    capacity = cache.capacity
    for part in (cache.self_kv, cache.text):
        for name, value in vars(part).items():
            if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[1] == capacity:
                yield part, name, value
            elif isinstance(value, list) and len(value) == capacity:
                yield part, name, value


def stage_to_host(cache: DiTCache) -> None:
    """Replace the cache's tensors by host copies, in place, so their device memory is freed.

    A CPU engine copies too (its device is the host): the same path runs
    everywhere, at the cost of one host copy of the held slots while growing.
    """
    for part, name, value in list(per_slot_state(cache)):
        if isinstance(value, torch.Tensor):
            setattr(part, name, value.to(HOST, copy=True))


def copy_slots(old: DiTCache, new: DiTCache) -> None:
    """Copy every slot of `old` (host or device) into the first slots of the bigger `new`."""
    n = old.capacity
    fields = {(type(part).__name__, name): value for part, name, value in per_slot_state(old)}
    for part, name, value in per_slot_state(new):
        held = fields.get((type(part).__name__, name))
        if held is None:
            continue
        if isinstance(value, torch.Tensor):
            for layer in range(value.shape[0]):  # one layer at a time: a bounded host->device transfer
                value[layer, :n].copy_(held[layer])
        else:
            value[:n] = held

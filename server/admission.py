"""Admission control: does a new session fit (MAX_SESSIONS, measured capacity), and a bounded FIFO of waiting inits.

A waiting init holds a future that resolves when it is admitted (its place
is then reserved until its session exists) and is told its position through
`notify` as the queue moves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from inference import protocol as P

TARGET_LOAD = 0.9  # admit while the engine's chunks use at most this share of its time (room for opens, prompts)


class AdmissionBusy(Exception):
    """No room now, and no queueing (ADMISSION=reject) or a full queue."""


@dataclass(kw_only=True, eq=False)
class Waiting:
    """An init waiting for capacity: `future` resolves when it is admitted."""

    owner: object  # the connection that sent the init (one entry per connection)
    size: str  # "W*H"
    future: asyncio.Future
    notify: Callable[[int], None]  # told the entry's position whenever it changes
    replacing: object | None = None  # the session this init replaces (its share is freed by the switch)
    position: int = 0  # 1 = next to start
    queued_at: float = field(default_factory=time.time)


def capacity_by_size(loads: list[P.SignatureLoad]) -> dict[str, float]:
    """Sessions each size could hold alone at the target fps (the smallest when sizes share signatures)."""
    capacity: dict[str, float] = {}
    for load in loads:
        if load.capacity:
            capacity[load.size] = min(load.capacity, capacity.get(load.size, load.capacity))
    return capacity


def engine_load(open_sizes: list[str], capacity: dict[str, float]) -> float:
    """Fraction of the engine's time the open sessions need (sizes not measured count 0)."""
    return sum(1.0 / capacity[size] for size in open_sizes if capacity.get(size))


def fits_capacity(open_sizes: list[str], size: str, capacity: dict[str, float], target: float = TARGET_LOAD) -> bool:
    """True when one more `size` session keeps the engine's load within `target` (the first always fits).

    Every open size must be measured first (the hub also waits until each
    open world has streamed a few chunks, so a burst of inits is admitted one
    measurement at a time). A size not measured yet counts as the costliest
    open size.
    """
    if not open_sizes:
        return True
    if any(not capacity.get(s) for s in open_sizes):
        return False
    return load_with(open_sizes, size, capacity) <= target + 1e-9


def load_with(open_sizes: list[str], size: str, capacity: dict[str, float]) -> float:
    """The engine's load with one more `size` session (a size not measured yet counts as the costliest open size)."""
    measured = [1.0 / capacity[s] for s in open_sizes if capacity.get(s)]
    share = 1.0 / capacity[size] if capacity.get(size) else max(measured, default=0.0)
    return engine_load(open_sizes, capacity) + share


class AdmissionQueue:
    """FIFO of waiting inits, at most `bound` long; `add` refuses (returns None) when full."""

    def __init__(self, bound: int):
        if bound < 0:
            raise ValueError(f"queue bound {bound}: expected 0 or more")
        self.bound = bound
        self.waiting: list[Waiting] = []

    def __len__(self) -> int:
        return len(self.waiting)

    @property
    def full(self) -> bool:
        return len(self.waiting) >= self.bound

    def add(self, entry: Waiting) -> int | None:
        """Append an entry (replacing the owner's earlier one); its 1-based position, None when full."""
        self.remove(entry.owner)
        if self.full:
            return None
        self.waiting.append(entry)
        entry.position = len(self.waiting)
        entry.notify(entry.position)
        return entry.position

    def remove(self, owner: object) -> bool:
        """Drop the owner's entry (a disconnect, a newer init); later entries move up and are told."""
        for i, entry in enumerate(self.waiting):
            if entry.owner is owner:
                del self.waiting[i]
                if not entry.future.done():
                    entry.future.cancel()
                self._renumber()
                return True
        return False

    def head(self) -> Waiting | None:
        return self.waiting[0] if self.waiting else None

    def pop_head(self) -> Waiting:
        entry = self.waiting.pop(0)
        self._renumber()
        return entry

    def _renumber(self) -> None:
        for i, entry in enumerate(self.waiting, start=1):
            if entry.position != i:
                entry.position = i
                entry.notify(i)

    def summary(self) -> list[dict]:
        now = time.time()
        return [{"position": e.position, "size": e.size, "waited_s": round(now - e.queued_at, 1)}
                for e in self.waiting]

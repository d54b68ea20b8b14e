"""Bounded LRU cache of prompt rewrites, keyed by everything that shapes a rewrite."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RewriteKey:
    """Identifies one rewrite: same key, same request to the model."""

    model: str
    system_prompt_version: str
    prompt: str
    image_sha256: str | None
    temperature: float
    max_tokens: int
    seed: int


class RewriteCache:
    """Least-recently-used map RewriteKey -> rewritten prompt; when full the oldest entry goes."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"capacity={capacity!r}: expected >= 0 (0 disables the cache)")
        self.capacity = capacity
        self._entries: OrderedDict[RewriteKey, str] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: RewriteKey) -> str | None:
        rewrite = self._entries.get(key)
        if rewrite is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return rewrite

    def put(self, key: RewriteKey, rewrite: str) -> None:
        if self.capacity == 0:
            return
        self._entries[key] = rewrite
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evictions += 1

    def __len__(self) -> int:
        return len(self._entries)

    def snapshot(self) -> dict:
        return {"size": len(self._entries), "capacity": self.capacity, "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions}

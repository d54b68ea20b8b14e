"""Per-session-slot key/value caches of the causal DiT (self-attention window + text K/V)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference.models.rope import host_index


class CacheFull(RuntimeError):
    """A global-mode cache has no room left for the chunk (use window mode for long sessions)."""


def slot_rows(slots: Sequence[int], device: torch.device) -> slice | torch.Tensor:
    """Cache rows of the batch items: a slice when they are consecutive, else a (B, 1) index."""
    if all(b == slots[0] + i for i, b in enumerate(slots)):
        return slice(slots[0], slots[0] + len(slots))
    return host_index(slots, device)[:, None]


@dataclass(kw_only=True)
class CachePlan:
    """Where one forward writes and reads each layer's cache (identical for every layer)."""

    rows: slice | torch.Tensor
    """Cache rows of the batch items (slice or (B, 1) long)."""
    write: slice | torch.Tensor
    """Slots receiving the chunk's keys: a slice shared by all items, or (B, L) long."""
    read: slice | torch.Tensor
    """Slots attended: a shared slice, or (B, Lk) long (padded; see key_mask)."""
    key_mask: torch.Tensor | None
    """(B, Lk) bool, True for real keys, when items attend windows of different lengths."""


class SelfAttentionCache:
    """Keys/values per layer for `capacity` session slots, with the reference's window+sink eviction.

    Each slot tracks host ints `global_end` (absolute token end of the last
    write) and `local_end` (end of the valid region in the slot). A new chunk
    (its end beyond `global_end`) that does not fit evicts the oldest non-sink
    tokens by shifting the rest left; repeated calls for the same chunk
    (denoising steps, the t=0 update) overwrite the chunk's own slots.
    """

    def __init__(self, *, num_layers: int, capacity: int, kv_tokens: int, num_heads: int, head_dim: int,
                 frame_seqlen: int, window: bool, sink_frames: int = 0, max_attention_tokens: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if kv_tokens <= 0 or kv_tokens % frame_seqlen:
            raise ValueError(f"kv_tokens {kv_tokens} must be a positive multiple of frame_seqlen {frame_seqlen}")
        self.kv_tokens = kv_tokens
        self.frame_seqlen = frame_seqlen
        self.window = window
        self.sink_tokens = sink_frames * frame_seqlen if window else 0
        self.max_attention_tokens = kv_tokens if max_attention_tokens is None else max_attention_tokens
        shape = (num_layers, capacity, kv_tokens, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (layers, slots, kv_tokens, heads, head_dim)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.global_end = [0] * capacity
        self.local_end = [0] * capacity

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def reset(self, slot: int) -> None:
        """Forget everything a slot holds (new session or session reset)."""
        self.k[:, slot].zero_()
        self.v[:, slot].zero_()
        self.global_end[slot] = 0
        self.local_end[slot] = 0

    def plan(self, slots: Sequence[int], start_tokens: Sequence[int], num_new: int) -> CachePlan:
        """Evict as needed for every layer, advance the indices and return where the chunk goes."""
        if len(slots) != len(start_tokens):
            raise ValueError(f"{len(slots)} slots but {len(start_tokens)} start offsets")
        spans = [self._advance(slot, start, num_new) for slot, start in zip(slots, start_tokens)]
        device = self.k.device
        rows = slot_rows(slots, device)
        if isinstance(rows, slice) and all(span == spans[0] for span in spans):
            write_start, end, read_start = spans[0]
            return CachePlan(rows=rows, write=slice(write_start, end), read=slice(read_start, end), key_mask=None)
        if isinstance(rows, slice):
            rows = host_index(slots, device)[:, None]
        write = host_index([s[0] for s in spans], device)[:, None] + torch.arange(num_new, device=device)
        lengths = [end - read_start for _, end, read_start in spans]
        offsets = torch.arange(max(lengths), device=device)  # (Lk,)
        read_start = host_index([s[2] for s in spans], device)[:, None]
        length = host_index(lengths, device)[:, None]
        key_mask = offsets[None, :] < length  # (B, Lk)
        read = read_start + torch.minimum(offsets[None, :], length - 1)  # padded keys repeat the last one
        return CachePlan(rows=rows, write=write, read=read, key_mask=key_mask)

    def _advance(self, slot: int, start: int, num_new: int) -> tuple[int, int, int]:
        """Reference index arithmetic for one slot; returns (write_start, local_end, read_start)."""
        end = start + num_new
        local_end, global_end = self.local_end[slot], self.global_end[slot]
        if self.window and end > global_end and num_new + local_end > self.kv_tokens:
            evicted = num_new + local_end - self.kv_tokens
            kept = local_end - evicted - self.sink_tokens
            if kept < 0:
                raise ValueError(f"window of {self.kv_tokens} tokens cannot hold {self.sink_tokens} sink tokens "
                                 f"plus a {num_new}-token chunk")
            sink = self.sink_tokens
            for store in (self.k, self.v):  # shift every layer of this slot at once
                store[:, slot, sink:sink + kept] = store[:, slot, sink + evicted:sink + evicted + kept].clone()
            new_local_end = local_end + end - global_end - evicted
        else:
            new_local_end = local_end + end - global_end
        write_start = new_local_end - num_new
        if write_start < 0 or new_local_end > self.kv_tokens:
            if not self.window:
                raise CacheFull(f"slot {slot}: tokens [{start}, {end}) do not fit the global cache of "
                                f"{self.kv_tokens} tokens; allocate more frames or use window mode")
            raise ValueError(f"slot {slot}: chunk at token {start} is not contiguous with the cached end "
                             f"{global_end}; window mode only appends or repeats the last chunk")
        self.global_end[slot] = end
        self.local_end[slot] = new_local_end
        return write_start, new_local_end, max(0, new_local_end - self.max_attention_tokens)

    def store(self, layer: int, plan: CachePlan, k_new: torch.Tensor, v_new: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Write the chunk's (B, L, heads, head_dim) keys/values; return the attended window and key mask."""
        k_layer, v_layer = self.k[layer], self.v[layer]  # (slots, kv_tokens, heads, head_dim)
        k_layer[plan.rows, plan.write] = k_new.to(k_layer.dtype)
        v_layer[plan.rows, plan.write] = v_new.to(v_layer.dtype)
        return k_layer[plan.rows, plan.read], v_layer[plan.rows, plan.read], plan.key_mask


class TextCache:
    """Cross-attention keys/values of each slot's prompt, per layer; recomputed only on prompt change."""

    def __init__(self, *, num_layers: int, capacity: int, text_len: int, num_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (num_layers, capacity, text_len, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (layers, slots, text_len, heads, head_dim)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.ready = [False] * capacity

    def check_ready(self, slots: Sequence[int]) -> None:
        missing = [s for s in slots if not self.ready[s]]
        if missing:
            raise RuntimeError(f"slots {missing} have no prompt encoded; call CausalDiT.set_prompt first")

    def layer(self, layer: int, rows: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, text_len, heads, head_dim) of the batch rows."""
        if isinstance(rows, torch.Tensor):
            rows = rows[:, 0]
        return self.k[layer, rows], self.v[layer, rows]


@dataclass(kw_only=True)
class DiTCache:
    """Everything the DiT keeps per session slot between calls."""

    self_kv: SelfAttentionCache
    """Self-attention keys/values of past chunks."""
    text: TextCache
    """Cross-attention keys/values of the current prompt."""

    @property
    def capacity(self) -> int:
        return self.self_kv.capacity

    def reset(self, slot: int) -> None:
        """Drop a slot's video history (its prompt encoding is kept)."""
        self.self_kv.reset(slot)

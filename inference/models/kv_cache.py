"""Per-session-slot key/value caches of the causal DiT (self-attention window + text K/V)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference.models.config import ROPE_POSITIONS
from inference.models.rope import PositionLimitReached, frame_rotation, host_index, rotate_frame_axis_


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
    rope_starts: list[int]
    """Each item's first RoPE frame (its absolute frame unless its slot was re-anchored)."""


@dataclass(kw_only=True)
class SlotMove:
    """How one slot's indices move for one chunk (computed before anything is written)."""

    slot: int
    global_end: int
    """Absolute token end after the chunk."""
    local_end: int
    """End of the slot's valid region after the chunk."""
    write_start: int
    """Where the chunk's tokens go."""
    read_start: int
    """First token attended."""
    evicted: int
    """Oldest non-sink tokens dropped to make room (0: none)."""
    frame_shift: int
    """Frames subtracted from the absolute frame of the slot's non-sink tokens after the chunk."""
    rope_start: int
    """The chunk's first RoPE frame."""


class SelfAttentionCache:
    """Keys/values per layer for `capacity` session slots, with the reference's window+sink eviction.

    Each slot tracks host ints `global_end` (absolute token end of the last
    write) and `local_end` (end of the valid region in the slot). A new chunk
    (its end beyond `global_end`) that does not fit evicts the oldest non-sink
    tokens by shifting the rest left, one layer at a time; repeated calls for
    the same chunk (denoising steps, the t=0 update) overwrite its own slots.

    Positions. Keys are stored rotated. A chunk's RoPE frames are its absolute
    frames minus the slot's `frame_shift` (0 until re-anchoring). In window
    mode, a new chunk whose RoPE frames would pass `rope_frames` re-anchors the
    slot: every key's RoPE frame becomes its frame index in the cache (sink
    frames already sit there; the kept frames are rotated back by the shift's
    change, layer by layer; the chunk starts right after them). Attention
    between the chunk and the kept frames is unchanged by this (RoPE sees only
    differences); only the distance to the sink frames shrinks. Results before
    the first re-anchoring are exactly those of absolute positions. Global mode
    never re-anchors: a chunk past the table raises PositionLimitReached.
    """

    def __init__(self, *, num_layers: int, capacity: int, kv_tokens: int, num_heads: int, head_dim: int,
                 frame_seqlen: int, window: bool, sink_frames: int = 0, max_attention_tokens: int | None = None,
                 rope_frames: int = ROPE_POSITIONS, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        if kv_tokens <= 0 or kv_tokens % frame_seqlen:
            raise ValueError(f"kv_tokens {kv_tokens} must be a positive multiple of frame_seqlen {frame_seqlen}")
        if window and rope_frames < kv_tokens // frame_seqlen:
            raise ValueError(f"a window of {kv_tokens // frame_seqlen} frames needs a RoPE table of at least as "
                             f"many frame positions, got rope_frames {rope_frames}")
        self.kv_tokens = kv_tokens
        self.frame_seqlen = frame_seqlen
        self.window = window
        self.sink_tokens = sink_frames * frame_seqlen if window else 0
        self.max_attention_tokens = kv_tokens if max_attention_tokens is None else max_attention_tokens
        self.rope_frames = rope_frames
        self.head_dim = head_dim
        shape = (num_layers, capacity, kv_tokens, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (layers, slots, kv_tokens, heads, head_dim)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.global_end = [0] * capacity
        self.local_end = [0] * capacity
        self.frame_shift = [0] * capacity

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def reset(self, slot: int) -> None:
        """Forget everything a slot holds (new session or session reset)."""
        self.k[:, slot].zero_()
        self.v[:, slot].zero_()
        self.global_end[slot] = 0
        self.local_end[slot] = 0
        self.frame_shift[slot] = 0

    def plan(self, slots: Sequence[int], start_tokens: Sequence[int], num_new: int) -> CachePlan:
        """Evict and re-anchor as needed, advance the indices and return where the chunk goes.

        Every item is checked before any slot moves, so a refused chunk
        (CacheFull, PositionLimitReached, ValueError) leaves the cache as it was.
        """
        if len(slots) != len(start_tokens):
            raise ValueError(f"{len(slots)} slots but {len(start_tokens)} start offsets")
        if len(set(slots)) != len(slots):
            raise ValueError(f"slots {list(slots)}: a batch holds each slot at most once")
        if min(start_tokens) < 0:
            raise ValueError(f"start tokens {list(start_tokens)} must be >= 0")
        moves = [self._move(slot, start, num_new) for slot, start in zip(slots, start_tokens)]
        for move in moves:
            self._commit(move)
        rope_starts = [m.rope_start for m in moves]
        spans = [(m.write_start, m.local_end, m.read_start) for m in moves]
        device = self.k.device
        rows = slot_rows(slots, device)
        if isinstance(rows, slice) and all(span == spans[0] for span in spans):
            write_start, end, read_start = spans[0]
            return CachePlan(rows=rows, write=slice(write_start, end), read=slice(read_start, end), key_mask=None,
                             rope_starts=rope_starts)
        if isinstance(rows, slice):
            rows = host_index(slots, device)[:, None]
        write = host_index([s[0] for s in spans], device)[:, None] + torch.arange(num_new, device=device)
        lengths = [end - read_start for _, end, read_start in spans]
        offsets = torch.arange(max(lengths), device=device)  # (Lk,)
        read_start = host_index([s[2] for s in spans], device)[:, None]
        length = host_index(lengths, device)[:, None]
        key_mask = offsets[None, :] < length  # (B, Lk)
        read = read_start + torch.minimum(offsets[None, :], length - 1)  # padded keys repeat the last one
        return CachePlan(rows=rows, write=write, read=read, key_mask=key_mask, rope_starts=rope_starts)

    def _move(self, slot: int, start: int, num_new: int) -> SlotMove:
        """Reference index arithmetic for one slot, plus its RoPE frames; changes nothing."""
        if start % self.frame_seqlen or num_new % self.frame_seqlen:
            raise ValueError(f"chunk tokens [{start}, {start + num_new}) are not whole frames of "
                             f"{self.frame_seqlen} tokens")
        end = start + num_new
        local_end, global_end = self.local_end[slot], self.global_end[slot]
        evicted = 0
        if self.window and end > global_end and num_new + local_end > self.kv_tokens:
            evicted = num_new + local_end - self.kv_tokens
            if local_end - evicted - self.sink_tokens < 0:
                raise ValueError(f"window of {self.kv_tokens} tokens cannot hold {self.sink_tokens} sink tokens "
                                 f"plus a {num_new}-token chunk")
        new_local_end = local_end + end - global_end - evicted
        write_start = new_local_end - num_new
        if write_start < 0 or new_local_end > self.kv_tokens:
            if not self.window:
                raise CacheFull(f"slot {slot}: tokens [{start}, {end}) do not fit the global cache of "
                                f"{self.kv_tokens} tokens; allocate more frames or use window mode")
            raise ValueError(f"slot {slot}: chunk at token {start} is not contiguous with the cached end "
                             f"{global_end}; window mode only appends or repeats the last chunk")
        start_frame, end_frame = start // self.frame_seqlen, end // self.frame_seqlen
        shift = self.frame_shift[slot]
        if not self.window and end_frame > self.rope_frames:
            raise PositionLimitReached(end_frame=end_frame, limit=self.rope_frames)
        if self.window and end > global_end and end_frame - shift > self.rope_frames:
            shift = start_frame - write_start // self.frame_seqlen  # RoPE frame = frame index in the cache
        return SlotMove(slot=slot, global_end=end, local_end=new_local_end, write_start=write_start,
                        read_start=max(0, new_local_end - self.max_attention_tokens), evicted=evicted,
                        frame_shift=shift, rope_start=start_frame - shift)

    def _commit(self, move: SlotMove) -> None:
        """Evict and re-anchor one slot layer by layer (no copy of a whole slot), then store its indices."""
        slot, sink = move.slot, self.sink_tokens
        if move.evicted:
            kept = self.local_end[slot] - move.evicted - sink
            for layer in range(self.k.shape[0]):
                for store in (self.k, self.v):
                    shift_tokens_left(store[layer, slot], sink + move.evicted, sink, kept)
        change = move.frame_shift - self.frame_shift[slot]
        if change and move.write_start > sink:  # re-rotate the kept non-sink keys [sink, write_start)
            cos, sin = frame_rotation(self.head_dim, -change, self.k.device)
            for layer in range(self.k.shape[0]):
                for first in range(sink, move.write_start, self.frame_seqlen):  # one frame at a time: small temporaries
                    rotate_frame_axis_(self.k[layer, slot, first:first + self.frame_seqlen], cos, sin)
        self.global_end[slot] = move.global_end
        self.local_end[slot] = move.local_end
        self.frame_shift[slot] = move.frame_shift

    def store(self, layer: int, plan: CachePlan, k_new: torch.Tensor, v_new: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Write the chunk's (B, L, heads, head_dim) keys/values; return the attended window and key mask."""
        k_layer, v_layer = self.k[layer], self.v[layer]  # (slots, kv_tokens, heads, head_dim)
        k_layer[plan.rows, plan.write] = k_new.to(k_layer.dtype)
        v_layer[plan.rows, plan.write] = v_new.to(v_layer.dtype)
        return k_layer[plan.rows, plan.read], v_layer[plan.rows, plan.read], plan.key_mask


def shift_tokens_left(store: torch.Tensor, source: int, target: int, count: int) -> None:
    """Move store[source:source+count] to store[target:...] (target < source) in place, without a full copy.

    Pieces of at most (source - target) tokens never overlap their own
    destination, and each overwrites only tokens an earlier piece already moved.
    """
    step = source - target
    for offset in range(0, count, step):
        n = min(step, count - offset)
        store[target + offset:target + offset + n] = store[source + offset:source + offset + n]


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

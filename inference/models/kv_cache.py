"""Per-session-slot key/value caches of the causal DiT (self-attention window + text K/V)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference.models.attention import takes_key_bias
from inference.models.config import ROPE_POSITIONS
from inference.models.rope import PositionLimitReached, frame_rotation, host_index, rotate_frame_axis_


class CacheFull(RuntimeError):
    """A global-mode cache has no room left for the chunk (use window mode for long sessions)."""


def row_span(slots: Sequence[int]) -> slice | None:
    """The slots as a slice when they are consecutive (a view reads them without a copy), else None."""
    if all(b == slots[0] + i for i, b in enumerate(slots)):
        return slice(slots[0], slots[0] + len(slots))
    return None


@dataclass(kw_only=True)
class CachePlan:
    """Where one forward writes and reads each layer's cache (identical for every layer).

    Every field the forward reads on the device is a tensor whose shape depends
    only on (batch, chunk length, read_tokens), so a compiled or graph-captured
    step sees the same inputs whatever the slots, positions and fill levels.
    """

    rows: torch.Tensor
    """(B,) long: the cache rows (slots) of the batch items."""
    write: torch.Tensor
    """(B, L) long: token positions in each row receiving the chunk's keys."""
    read_tokens: int
    """Leading tokens of each row attended (the window's size when static, else the longest valid prefix)."""
    key_mask: torch.Tensor | None
    """(B, read_tokens) bool, True for keys an item attends; None when every item attends all read_tokens."""
    span: slice | None
    """The rows as a slice when consecutive and the plan is not static (eager reads them as views)."""
    host_writes: list[tuple[int, int]] | None
    """(slot, first written token) per item, host ints, when not static (eager writes slices: no index kernel)."""
    rope_starts: list[int]
    """Each item's first RoPE frame (its absolute frame unless its slot was re-anchored)."""
    text_bias: torch.Tensor | None = None
    """(B, T) float32 score bias over the first T text keys of each row (compact text cache), else None."""
    keys_only: bool = False
    """The forward only writes the chunk's keys (a cache update whose output nobody reads): the last block stops
    once its keys are stored and the step returns None."""


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

    def plan(self, slots: Sequence[int], start_tokens: Sequence[int], num_new: int, *,
             static: bool = False) -> CachePlan:
        """Evict and re-anchor as needed, advance the indices and return where the chunk goes.

        Every item is checked before any slot moves, so a refused chunk
        (CacheFull, PositionLimitReached, ValueError) leaves the cache as it was.
        static=True (compiled or graph-captured steps): a window cache reads
        every row whole, so shapes never change with fill levels or slots (a
        global cache still reads its longest valid prefix), and where attention
        takes a mask for free (the CPU's direct path) the mask is always there,
        so its presence does not change either. On a GPU it is left out when
        every key is valid, which keeps FlashAttention (no masks) in steady state.
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
        device = self.k.device
        ends, reads = [m.local_end for m in moves], [m.read_start for m in moves]
        read_tokens = self.kv_tokens if static and self.window else max(ends)
        key_mask = None
        if (static and takes_key_bias(device)) or any(r != 0 or e != read_tokens for r, e in zip(reads, ends)):
            offsets = torch.arange(read_tokens, device=device)[None, :]  # (1, R)
            key_mask = (offsets >= host_index(reads, device)[:, None]) & (offsets < host_index(ends, device)[:, None])
        write = host_index([m.write_start for m in moves], device)[:, None] + torch.arange(num_new, device=device)
        return CachePlan(rows=host_index(slots, device), write=write, read_tokens=read_tokens, key_mask=key_mask,
                         span=None if static else row_span(slots), rope_starts=[m.rope_start for m in moves],
                         host_writes=None if static else [(m.slot, m.write_start) for m in moves])

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
        """Write the chunk's (B, L, heads, head_dim) keys/values; return the attended (B, R, heads, head_dim)
        window and key mask.

        Static plans index the whole store in place (index_put_ on the base
        tensor, which a compiled step also does in place rather than copying
        the store); eager ones copy each item's slice.
        """
        self.write(layer, plan, k_new, v_new)
        return self.window_of(self.k, layer, plan), self.window_of(self.v, layer, plan), plan.key_mask

    def write(self, layer: int, plan: CachePlan, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Write the chunk's (B, L, heads, head_dim) keys/values where the plan says (see `store`)."""
        for store, new in ((self.k, k_new), (self.v, v_new)):
            new = new.to(store.dtype)
            if plan.host_writes is not None:
                for b, (slot, start) in enumerate(plan.host_writes):
                    store[layer, slot, start:start + new.shape[1]] = new[b]
            else:
                store.index_put_((torch.full_like(plan.write, layer), plan.rows[:, None], plan.write), new)

    @staticmethod
    def window_of(store: torch.Tensor, layer: int, plan: CachePlan) -> torch.Tensor:
        """(B, read_tokens, heads, head_dim): a view for consecutive rows, else a gathered copy."""
        # R from the mask's shape when there is one: a compiled step may treat it as a dynamic size
        tokens = plan.read_tokens if plan.key_mask is None else plan.key_mask.shape[1]
        prefix = store[layer, :, :tokens]  # (slots, R, heads, head_dim)
        return prefix[plan.span] if plan.span is not None else prefix.index_select(0, plan.rows)


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
    """Cross-attention keys/values of each slot's prompt, per layer; recomputed only on prompt change.

    compact=True (for attention that takes a key bias: the CPU's direct path).
    A prompt of n < text_len rows is zero-padded to text_len, and every
    padded row embeds to the same key and value; softmax over m equal keys
    weighs them like one key with score + log(m). So a compact slot attends
    its n rows and the first padded row only, with a bias of 0, log(text_len
    - n) and -inf beyond (`bias_of`): n + 1 keys instead of text_len, with
    the same result (to float rounding).
    """

    def __init__(self, *, num_layers: int, capacity: int, text_len: int, num_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", compact: bool = False):
        self.text_len = text_len
        self.compact = compact
        # compact: one spare row, so the attended rows (2..text_len) are never the whole stored length and a
        # compiled step's dynamic text length is never specialised (on 1, or on the full length)
        shape = (num_layers, capacity, text_len + compact, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (layers, slots, rows, heads, head_dim)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.ready = [False] * capacity
        self.prompt_rows = [text_len] * capacity  # each slot's own (unpadded) prompt rows

    def keys(self, slot: int) -> int:
        """Text keys the slot attends: its prompt rows and the one standing for the padding (compact), else all."""
        rows = self.prompt_rows[slot]
        return rows + 1 if self.compact and rows < self.text_len else self.text_len

    def set(self, slot: int, k: torch.Tensor, v: torch.Tensor, prompt_rows: int) -> None:
        """Store a prompt's keys/values (layers, text_len, heads, head_dim) whose first prompt_rows rows are its own."""
        self.prompt_rows[slot] = prompt_rows
        keys = self.keys(slot)
        for store, new in ((self.k, k), (self.v, v)):
            store[:, slot, :keys] = new[:, :keys].to(store.dtype)
            store[:, slot, keys:].zero_()
        self.ready[slot] = True

    def check_ready(self, slots: Sequence[int]) -> None:
        missing = [s for s in slots if not self.ready[s]]
        if missing:
            raise RuntimeError(f"slots {missing} have no prompt encoded; call CausalDiT.set_prompt first")

    def bias_of(self, slots: Sequence[int]) -> torch.Tensor | None:
        """(B, T) float32 score bias of the batch's text keys (T: the most any item attends); None unless compact.

        0 for a prompt's own rows, log(text_len - rows) for the row standing for the padding, -inf past it.
        """
        if not self.compact:
            return None
        rows = torch.tensor([self.prompt_rows[s] for s in slots])[:, None]  # (B, 1), built on the host
        offsets = torch.arange(max(2, *(self.keys(s) for s in slots)))[None, :]  # (1, T): T >= 2, see __init__
        bias = torch.where(offsets < rows, 0.0, float("-inf"))
        padding = torch.log((self.text_len - rows).clamp(min=1).float())  # (B, 1): log of the padded rows
        bias = torch.where((offsets == rows) & (rows < self.text_len), padding, bias)
        return bias.to(self.k.device)

    def layer(self, layer: int, plan: CachePlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys, values (B, T, heads, head_dim) and bias (B, T) of the batch rows (T from the plan's text bias)."""
        tokens = self.text_len if plan.text_bias is None else plan.text_bias.shape[1]
        k, v = self.k[layer, :, :tokens], self.v[layer, :, :tokens]  # (slots, T, heads, head_dim)
        if plan.span is not None:
            return k[plan.span], v[plan.span], plan.text_bias
        return k.index_select(0, plan.rows), v.index_select(0, plan.rows), plan.text_bias


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

    def plan(self, slots: Sequence[int], start_tokens: Sequence[int], num_new: int, *,
             static: bool = False) -> CachePlan:
        """The self-attention plan (SelfAttentionCache.plan) with the batch's text bias."""
        self.text.check_ready(slots)
        plan = self.self_kv.plan(slots, start_tokens, num_new, static=static)
        plan.text_bias = self.text.bias_of(slots)
        return plan

    def reset(self, slot: int) -> None:
        """Drop a slot's video history (its prompt encoding is kept)."""
        self.self_kv.reset(slot)

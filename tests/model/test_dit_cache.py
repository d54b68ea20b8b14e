"""Self-attention cache eviction (window + sink), global-mode limits and the RoPE position limit."""

import pytest
import torch

from inference.models.config import DiTConfig
from inference.models.dit import CausalDiT
from inference.models.kv_cache import CacheFull, SelfAttentionCache
from inference.models.rope import PositionLimitReached

FRAME_SEQLEN, CHUNK = 2, 3


def frame_cache(*, window: bool, kv_frames: int, sink_frames: int = 0) -> SelfAttentionCache:
    return SelfAttentionCache(num_layers=2, capacity=1, kv_tokens=kv_frames * FRAME_SEQLEN, num_heads=1, head_dim=2,
                              frame_seqlen=FRAME_SEQLEN, window=window, sink_frames=sink_frames)


def write_chunk(cache: SelfAttentionCache, chunk: int, calls: int = 5) -> None:
    """Write a chunk the way a rollout does (4 denoising steps + the clean update), keys = frame ids."""
    start = chunk * CHUNK * FRAME_SEQLEN
    frames = torch.arange(chunk * CHUNK, (chunk + 1) * CHUNK, dtype=torch.float32).repeat_interleave(FRAME_SEQLEN)
    keys = frames.view(1, -1, 1, 1).expand(1, -1, 1, 2)  # (B, L, heads, head_dim)
    for _ in range(calls):
        plan = cache.plan([0], [start], CHUNK * FRAME_SEQLEN)
        for layer in range(2):
            cache.store(layer, plan, keys, keys)


def held_frames(cache: SelfAttentionCache) -> list[int]:
    held = cache.k[0, 0, :cache.local_end[0]:FRAME_SEQLEN, 0, 0]
    return [int(f) for f in held]


def test_window_with_sink_evicts_the_oldest_non_sink_frames():
    """A 6-frame window with a 1-frame sink keeps frame 0 and the newest frames, per the reference rule."""
    cache = frame_cache(window=True, kv_frames=6, sink_frames=1)
    shape = tuple(cache.k.shape)
    expected = [[0, 1, 2], [0, 1, 2, 3, 4, 5], [0, 4, 5, 6, 7, 8], [0, 7, 8, 9, 10, 11], [0, 10, 11, 12, 13, 14]]
    for chunk, frames in enumerate(expected):
        write_chunk(cache, chunk)
        assert held_frames(cache) == frames
        assert cache.global_end[0] == (chunk + 1) * CHUNK * FRAME_SEQLEN
        assert tuple(cache.k.shape) == shape  # memory stays bounded
    assert torch.equal(cache.k[1], cache.k[0])  # every layer evicts identically


def test_repeated_calls_for_one_chunk_overwrite_its_own_slots():
    """Denoising steps of a chunk keep the cache indices where the chunk's first call put them."""
    cache = frame_cache(window=True, kv_frames=6, sink_frames=1)
    for chunk in range(3):
        write_chunk(cache, chunk, calls=1)
    ends = (cache.global_end[0], cache.local_end[0])
    write_chunk(cache, 2, calls=4)
    assert (cache.global_end[0], cache.local_end[0]) == ends
    assert held_frames(cache) == [0, 4, 5, 6, 7, 8]


def test_window_without_sink_keeps_only_the_newest_frames():
    """With no sink a 4-frame window holds exactly the last frames written."""
    cache = frame_cache(window=True, kv_frames=4)
    for chunk in range(3):
        write_chunk(cache, chunk)
    assert held_frames(cache) == [5, 6, 7, 8]


def test_global_cache_raises_cache_full_when_out_of_room():
    """A global-mode cache sized for one chunk refuses the second chunk with CacheFull."""
    cache = frame_cache(window=False, kv_frames=3)
    write_chunk(cache, 0)
    with pytest.raises(CacheFull, match="global cache of 6 tokens"):
        write_chunk(cache, 1)


def test_window_too_small_for_sink_plus_chunk_is_refused():
    """A window that cannot hold the sink plus one chunk fails with a message naming both sizes."""
    cache = frame_cache(window=True, kv_frames=3, sink_frames=1)
    write_chunk(cache, 0)
    with pytest.raises(ValueError, match="2 sink tokens plus a 6-token chunk"):
        write_chunk(cache, 1)


@torch.no_grad()
def test_position_limit_raises_before_touching_the_cache():
    """A chunk reaching past RoPE position 1023 raises PositionLimitReached and leaves the cache as it was."""
    torch.manual_seed(0)
    model = CausalDiT(DiTConfig.tiny(text_dim=32)).eval()
    cache = model.new_cache(capacity=1, frame_seqlen=6, kv_frames=1030)  # global: tokens sit at absolute offsets
    model.set_prompt(cache, 0, torch.randn(3, 32))
    x, y, control = torch.randn(1, 16, 3, 4, 6), torch.randn(1, 20, 3, 4, 6), torch.randn(1, 384, 3, 4, 6)
    model(x, y, torch.tensor([999]), control, cache, start_frames=[1020])
    ends = (cache.self_kv.global_end[0], cache.self_kv.local_end[0])
    with pytest.raises(PositionLimitReached, match="RoPE table ends at 1023") as info:
        model(x, y, torch.tensor([999]), control, cache, start_frames=[1023])
    assert info.value.end_frame == 1026 and info.value.limit == 1024
    assert (cache.self_kv.global_end[0], cache.self_kv.local_end[0]) == ends


@torch.no_grad()
def test_window_mode_model_runs_many_chunks_in_bounded_memory():
    """A window-mode DiT streams 5 chunks with a cache of local_attn_size frames and finite outputs."""
    torch.manual_seed(0)
    model = CausalDiT(DiTConfig.tiny(text_dim=32, local_attn_size=6, sink_size=1)).eval()
    cache = model.new_cache(capacity=1, frame_seqlen=6)
    model.set_prompt(cache, 0, torch.randn(3, 32))
    assert cache.self_kv.k.shape[2] == 6 * 6
    for chunk in range(5):
        x, y, control = torch.randn(1, 16, 3, 4, 6), torch.randn(1, 20, 3, 4, 6), torch.randn(1, 384, 3, 4, 6)
        out = model(x, y, torch.tensor([999]), control, cache, start_frames=[chunk * 3])
        model(out, y, torch.tensor([0.0]), control, cache, start_frames=[chunk * 3])
        assert torch.isfinite(out).all()
        assert cache.self_kv.local_end[0] == min(18 * (chunk + 1), 36)
    assert cache.self_kv.k.shape[2] == 36

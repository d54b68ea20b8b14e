"""Batched DiT forwards over session slots equal one forward per session."""

import torch

from inference.models.config import DiTConfig
from inference.models.dit import CausalDiT
from tests.tolerance import assert_reorder_close

LAT_H, LAT_W, CHUNK = 4, 6, 3
FRAME_SEQLEN = (LAT_H // 2) * (LAT_W // 2)
CONFIG = DiTConfig.tiny(text_dim=32)
# batched and single forwards sum the same products in other orders; the longest sums run along the layers
TERMS = CONFIG.num_layers * max(CONFIG.dim, CONFIG.ffn_dim)


def tiny_model() -> CausalDiT:
    torch.manual_seed(0)
    return CausalDiT(CONFIG).eval()


def chunk_inputs(seed: int, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, CHUNK, LAT_H, LAT_W, generator=g)
    y = torch.randn(batch, 20, CHUNK, LAT_H, LAT_W, generator=g)
    control = torch.randn(batch, 384, CHUNK, LAT_H, LAT_W, generator=g)
    return x, y, control


def run_history(model, cache, slot, chunks):
    """Feed `chunks` past chunks (2 steps + clean update each) into one slot."""
    for c in range(chunks):
        x, y, control = chunk_inputs(100 + c)
        for t in (999.0, 702.0, 0.0):
            model(x, y, torch.tensor([t]), control, cache, start_frames=[c * CHUNK], slots=[slot])


@torch.no_grad()
def test_two_sessions_at_different_offsets_and_prompts_match_unbatched_forwards():
    """Sessions at frame 0 and frame 6 with different prompts give the same outputs batched as alone."""
    model = tiny_model()
    prompts = [torch.randn(5, 32, generator=torch.Generator().manual_seed(1)),
               torch.randn(9, 32, generator=torch.Generator().manual_seed(2))]
    alone = [model.new_cache(capacity=1, frame_seqlen=FRAME_SEQLEN, kv_frames=12) for _ in range(2)]
    batched = model.new_cache(capacity=2, frame_seqlen=FRAME_SEQLEN, kv_frames=12)
    for slot, prompt in enumerate(prompts):
        model.set_prompt(alone[slot], 0, prompt)
        model.set_prompt(batched, slot, prompt)
    run_history(model, alone[1], 0, chunks=2)
    run_history(model, batched, 1, chunks=2)

    starts = [0, 2 * CHUNK]
    for chunk_seed, t_values in ((7, (999, 957)), (8, (899, 899)), (9, (0, 0))):
        x, y, control = chunk_inputs(chunk_seed, batch=2)
        t = torch.tensor(t_values)
        out = model(x, y, t, control, batched, start_frames=starts)
        for b in range(2):
            single = model(x[b:b + 1], y[b:b + 1], t[b:b + 1], control[b:b + 1], alone[b], start_frames=[starts[b]])
            assert_reorder_close(out[b:b + 1], single, terms=TERMS, what=f"flow of item {b}")
    # The next chunk: the slots now attend windows of different lengths (18 vs 54 tokens).
    starts = [CHUNK, 3 * CHUNK]
    x, y, control = chunk_inputs(10, batch=2)
    out = model(x, y, torch.tensor([957, 702]), control, batched, start_frames=starts)
    for b in range(2):
        single = model(x[b:b + 1], y[b:b + 1], torch.tensor([[957, 702][b]]), control[b:b + 1], alone[b],
                       start_frames=[starts[b]])
        assert_reorder_close(out[b:b + 1], single, terms=TERMS, what=f"flow of item {b}")
        end = alone[b].self_kv.local_end[0]
        assert batched.self_kv.local_end[b] == end
        assert_reorder_close(batched.self_kv.k[:, b, :end], alone[b].self_kv.k[:, 0, :end], terms=TERMS,
                             what=f"K cache of slot {b}")


@torch.no_grad()
def test_a_batch_may_use_slots_out_of_order():
    """Items mapped to slots [2, 0] read and write exactly those slots."""
    model = tiny_model()
    prompt = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    many = model.new_cache(capacity=3, frame_seqlen=FRAME_SEQLEN, kv_frames=6)
    one = model.new_cache(capacity=1, frame_seqlen=FRAME_SEQLEN, kv_frames=6)
    for slot in range(3):
        model.set_prompt(many, slot, prompt)
    model.set_prompt(one, 0, prompt)
    x, y, control = chunk_inputs(11, batch=2)
    out = model(x, y, torch.tensor([999, 999]), control, many, start_frames=[0, 0], slots=[2, 0])
    single = model(x[:1], y[:1], torch.tensor([999]), control[:1], one, start_frames=[0])
    assert_reorder_close(out[:1], single, terms=TERMS, what="flow")
    assert many.self_kv.local_end == [FRAME_SEQLEN * CHUNK, 0, FRAME_SEQLEN * CHUNK]
    assert_reorder_close(many.self_kv.k[:, 2, :18], one.self_kv.k[:, 0, :18], terms=TERMS, what="K cache")

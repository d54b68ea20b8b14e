"""The DiT step compiled (one graph per batch size, no recompiles, no graph breaks) and graph-ready, equal to eager."""

import pytest
import torch
from torch._dynamo.utils import counters

from inference.models.config import DiTConfig
from inference.models.dit import CausalDiT, ChunkCamera
from inference.models.dit_step import CompiledStep, StaticInputs
from tests.tolerance import assert_reorder_close

LAT_H, LAT_W, CHUNK = 4, 6, 3
FRAME_SEQLEN = (LAT_H // 2) * (LAT_W // 2)
CONFIG = DiTConfig.tiny(text_dim=32, local_attn_size=6, sink_size=1)  # evicts from the third chunk on
TERMS = CONFIG.num_layers * max(CONFIG.dim, CONFIG.ffn_dim)  # eager and compiled sum in other orders
PROMPTS = [torch.randn(n, 32, generator=torch.Generator().manual_seed(n)) for n in (3, 9, 16, 6)]


def tiny_model() -> CausalDiT:
    torch.manual_seed(0)
    return CausalDiT(CONFIG).eval()


class Twin:
    """One model with two identical caches: one driven eagerly, one through the step under test."""

    def __init__(self, model: CausalDiT, capacity: int, *, gpu_layout: bool = False):
        """gpu_layout: the text cache and camera as on a GPU (every text row kept, camera MLPs per call)."""
        self.model = model
        self.reuse = not gpu_layout
        self.eager = model.new_cache(capacity=capacity, frame_seqlen=FRAME_SEQLEN)
        self.other = model.new_cache(capacity=capacity, frame_seqlen=FRAME_SEQLEN, compact_text=not gpu_layout)
        self.frames = [0] * capacity
        for slot in range(capacity):
            self.prompt(slot, PROMPTS[slot % len(PROMPTS)])

    def prompt(self, slot: int, context: torch.Tensor) -> None:
        for cache in (self.eager, self.other):
            self.model.set_prompt(cache, slot, context)

    def chunk(self, slots: list[int], step, seed: int) -> None:
        """One chunk (2 denoising calls + the update) for `slots`; every call's outputs compared."""
        g = torch.Generator().manual_seed(seed)
        batch = len(slots)
        x = torch.randn(batch, 16, CHUNK, LAT_H, LAT_W, generator=g)
        y = torch.randn(batch, 20, CHUNK, LAT_H, LAT_W, generator=g)
        control = torch.randn(batch, 384, CHUNK, LAT_H, LAT_W, generator=g)
        camera = ChunkCamera(control, reuse=self.reuse)
        starts = [self.frames[s] for s in slots]
        for t in (900, 400, 0):
            timestep = torch.full((batch,), t)
            want = self.model(x, y, timestep, control, self.eager, starts, slots)
            got = self.model(x, y, timestep, camera, self.other, starts, slots, step=step, static=True)
            assert_reorder_close(got, want, terms=TERMS, what=f"slots {slots} frame {starts} t {t}")
        for s in slots:
            self.frames[s] += CHUNK


def drive(twin: Twin, step) -> None:
    """Chunk indices 0..5 (window filling, then evicting), slot sets of one and two, a prompt change."""
    seed = 0
    for index in range(6):
        for slots in ([0], [2]) if index % 2 else ([2], [0]):
            seed += 1
            twin.chunk(slots, step, seed)
        if index == 3:
            twin.prompt(0, PROMPTS[3])  # a prompt of another length
    for slots in ([1, 0], [2, 1], [0, 2]):  # slot 1 starts: its window fills while the others are full
        seed += 1
        twin.chunk(slots, step, seed)


@pytest.mark.slow
@pytest.mark.timeout(900)
@torch.no_grad()
def test_compiled_step_equals_eager_with_one_graph_per_batch_size():
    """Across chunk indices, fill levels, slot sets, prompts and pool sizes the compiled step equals eager and
    compiles once per batch size: no recompile, no graph break."""
    torch._dynamo.reset()
    counters.clear()
    model = tiny_model()
    step = CompiledStep(model)
    drive(Twin(model, capacity=3), step)
    grown = Twin(model, capacity=4)  # a pool that grew: another slot count, same graphs
    grown.chunk([3], step, seed=99)
    grown.chunk([0, 3], step, seed=100)
    assert counters["stats"]["unique_graphs"] == 2  # batch 1 and batch 2
    assert not counters["graph_break"]


@torch.no_grad()
def test_step_replayed_on_static_inputs_equals_eager():
    """The step re-run on the buffers of its first call, with only each call's tensors copied in (what a CUDA
    graph replay does), equals eager forwards: every per-call value reaches the step as a tensor."""
    model = tiny_model()
    static: dict[tuple, StaticInputs] = {}

    def replayed(x, y, t, camera, rope, cache, plan):
        key = StaticInputs.key_of(x, y, t, camera, rope, plan)
        if key not in static:
            static[key] = StaticInputs(x, y, t, camera, rope, plan)
        static[key].load(x, y, t, camera, rope, plan)
        return static[key].run(model.step, cache)

    drive(Twin(model, capacity=3, gpu_layout=True), replayed)
    assert len(static) == 2  # one set of buffers per batch size, as one graph each would be


@torch.no_grad()
def test_forward_runs_on_the_meta_device():
    """A whole window session runs on meta tensors, which refuse every host read (.item(), bool(), masks that
    size outputs): the forward, evictions included, never waits on device values."""
    with torch.device("meta"):
        model = CausalDiT(CONFIG).eval()
    cache = model.new_cache(capacity=2, frame_seqlen=FRAME_SEQLEN)
    model.set_prompt(cache, 1, torch.empty(5, 32, device="meta"))
    for index in range(4):
        x = torch.empty(1, 16, CHUNK, LAT_H, LAT_W, device="meta")
        y = torch.empty(1, 20, CHUNK, LAT_H, LAT_W, device="meta")
        control = ChunkCamera(torch.empty(1, 384, CHUNK, LAT_H, LAT_W, device="meta"), reuse=True)
        out = model(x, y, torch.empty(1, device="meta"), control, cache, [index * CHUNK], [1], static=True)
        assert out.shape == x.shape
    assert cache.self_kv.local_end[1] == 6 * FRAME_SEQLEN  # evicted to the window

"""The DiT step compiled (one graph per batch size, no recompiles, no graph breaks) and graph-ready, equal to eager."""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from inference.engine.base import ChunkWork, SessionSpec
from inference.models.config import DiTConfig
from inference.models.dit import CausalDiT, ChunkCamera, TimeConditions
from inference.models.dit_step import CompiledStep, ReplayedStep
from tests.tolerance import FRAME_LEVELS, assert_reorder_close

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
        self.times = TimeConditions(model)  # the step takes each timestep's condition, kept as a pipeline keeps it
        for slot in range(capacity):
            self.prompt(slot, PROMPTS[slot % len(PROMPTS)])

    def prompt(self, slot: int, context: torch.Tensor) -> None:
        for cache in (self.eager, self.other):
            self.model.set_prompt(cache, slot, context)

    def chunk(self, slots: list[int], step, seed: int) -> None:
        """One chunk (2 denoising calls + the update) for `slots`; every call's outputs compared, and the keys
        the step's keys-only update wrote with those of the eager full forward."""
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
            got = self.model(x, y, self.times.get(t, batch), camera, self.other, starts, slots, step=step,
                             static=True, keys_only=t == 0)
            if t:
                assert_reorder_close(got, want, terms=TERMS, what=f"slots {slots} frame {starts} t {t}")
            else:
                assert got is None and want.shape == x.shape
        for s in slots:
            self.frames[s] += CHUNK
            valid = self.eager.self_kv.local_end[s]
            assert self.other.self_kv.local_end[s] == valid
            for name in ("k", "v"):
                assert_reorder_close(getattr(self.other.self_kv, name)[:, s, :valid],
                                     getattr(self.eager.self_kv, name)[:, s, :valid], terms=TERMS,
                                     what=f"{name} of slot {s} after frame {starts}")


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


@torch.no_grad()
def test_time_conditions_are_computed_once_per_value_and_follow_the_weights():
    model = tiny_model()
    times = TimeConditions(model)
    first = times.get(900, 2)
    assert first.shape == (2, 7, CONFIG.dim) and first.dtype == torch.float32
    assert times.get(900, 2) is first  # kept for the next chunk
    assert torch.equal(first, model.time_condition(torch.full((2,), 900)))
    assert not torch.equal(times.get(400, 2), first) and times.get(900, 1).shape == (1, 7, CONFIG.dim)
    model.time_projection[1].weight.mul_(2)  # in place, as load_state_dict writes
    again = times.get(900, 2)
    assert again is not first and torch.equal(again, model.time_condition(torch.full((2,), 900)))
    assert torch.equal(again[:, 0], first[:, 0]) and not torch.equal(again[:, 1:], first[:, 1:])
    model.time_embedding[0].weight = torch.nn.Parameter(model.time_embedding[0].weight * 2)  # replaced
    assert not torch.equal(times.get(900, 2)[:, 0], first[:, 0])


@torch.no_grad()
def test_forward_takes_timesteps_or_their_condition():
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 16, CHUNK, LAT_H, LAT_W, generator=g), torch.randn(2, 20, CHUNK, LAT_H, LAT_W, generator=g)
    control = torch.randn(2, 384, CHUNK, LAT_H, LAT_W, generator=g)
    caches = [model.new_cache(capacity=2, frame_seqlen=FRAME_SEQLEN) for _ in range(2)]
    for cache in caches:
        for slot in (0, 1):
            model.set_prompt(cache, slot, PROMPTS[slot])
    t = torch.tensor([900, 400])
    raw = model(x, y, t, control, caches[0], [0, 0])
    conditioned = model(x, y, model.time_condition(t), control, caches[1], [0, 0])
    assert torch.equal(raw, conditioned)
    with pytest.raises(ValueError, match=r"timesteps \(3,\): expected \(2,\) or a time condition"):
        model(x, y, torch.tensor([1, 2, 3]), control, caches[0], [3, 3])
    with pytest.raises(ValueError, match=r"timesteps \(1, 7, 64\)"):
        model(x, y, model.time_condition(t[:1]), control, caches[0], [3, 3])


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
    assert counters["stats"]["unique_graphs"] == 4  # batch 1 and batch 2, denoising calls and keys-only updates
    assert not counters["graph_break"]
    with torch.no_grad():
        model.blocks[0].ffn[0].weight.mul_(2.0)  # the graphs hold the weights they were compiled with
    with pytest.raises(RuntimeError, match="changed after its step was compiled"):
        grown.chunk([3], step, seed=101)


@torch.no_grad()
def test_step_replayed_on_static_inputs_equals_eager():
    """The step re-run on the buffers of its first call, with only each call's tensors copied in (what a CUDA
    graph replay does), equals eager forwards: every per-call value reaches the step as a tensor."""
    model = tiny_model()
    replayed = ReplayedStep(model.step)
    drive(Twin(model, capacity=3, gpu_layout=True), replayed)
    assert len(replayed.inputs) == 4  # per batch size, denoising calls and keys-only updates: a graph each


@torch.no_grad()
def test_a_keys_only_update_stores_the_keys_of_a_full_forward():
    """The cache update's keys-only forward returns nothing and leaves the cache exactly as the full forward
    does (the same ops up to the last block's keys; what follows them only makes the unread prediction)."""
    model = tiny_model()
    full, keys_only = Twin(model, capacity=2).eager, Twin(model, capacity=2).eager
    g = torch.Generator().manual_seed(7)
    for index in range(4):  # the window fills, then evicts
        x = torch.randn(2, 16, CHUNK, LAT_H, LAT_W, generator=g)
        y = torch.randn(2, 20, CHUNK, LAT_H, LAT_W, generator=g)
        camera = ChunkCamera(torch.randn(2, 384, CHUNK, LAT_H, LAT_W, generator=g))
        clean = torch.zeros(2)
        assert model(x, y, clean, camera, full, [index * CHUNK] * 2, [1, 0]).shape == x.shape
        assert model(x, y, clean, camera, keys_only, [index * CHUNK] * 2, [1, 0], keys_only=True) is None
        assert torch.equal(full.self_kv.k, keys_only.self_kv.k) and torch.equal(full.self_kv.v, keys_only.self_kv.v)
        assert full.self_kv.local_end == keys_only.self_kv.local_end


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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "lingbot-tiny", seed=3)


def engine_frames(engine, chunks: int) -> list[np.ndarray]:
    """A walking session's frames, chunk by chunk (the window evicts from the third chunk)."""
    engine.open_session(SessionSpec(session_id="walk", prompt="green hills", seed=5, width=48, height=32))
    out = []
    for index in range(chunks):
        frames = engine.sessions["walk"].expected_frames()
        poses = np.broadcast_to(np.eye(4), (frames, 4, 4)).copy()
        poses[:, 2, 3] = 0.05 * (index * 12 + np.arange(frames))
        keys = np.zeros((frames, 8), np.float32)
        keys[:, 0] = 1.0
        out.append(engine.generate([ChunkWork(session_id="walk", chunk_index=index, poses=poses, keys=keys)])[0].frames)
    engine.close_session("walk")
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_engine_flag_compile_streams_the_frames_of_eager_and_says_so(model_dir):
    """`--compile` streams the same frames as eager (within the 8-bit rounding rule) and /status and the model
    line name the compiled step."""
    from inference.engine.__main__ import build_engine, parse_args

    base = ["--engine", "lingbot-fast", "--endpoint", "tcp://127.0.0.1:1", "--model-dir", str(model_dir),
            "--kv-window", "6", "--kv-sink", "3"]
    eager, compiled = build_engine(parse_args(base), None), build_engine(parse_args(base + ["--compile"]), None)
    assert compiled.health()["attention"] == "direct, compiled" and eager.health()["attention"] == "direct"
    assert "step compiled" in compiled.info().model and compiled.info().extra["step"] == "compiled"
    for want, got in zip(engine_frames(eager, 4), engine_frames(compiled, 4)):
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).max() <= FRAME_LEVELS


def test_engine_flag_cuda_graphs_is_refused_where_it_cannot_run(model_dir):
    """`--cuda-graphs` on a CPU, or with global attention, is refused before serving, naming the reason."""
    from inference.engine.__main__ import build_engine, parse_args

    base = ["--engine", "lingbot-fast", "--endpoint", "tcp://127.0.0.1:1", "--model-dir", str(model_dir),
            "--cuda-graphs"]
    with pytest.raises(ValueError, match="needs a CUDA device"):
        build_engine(parse_args(base), None)
    with pytest.raises(ValueError, match="global attention"):
        build_engine(parse_args(base + ["--kv-window", "-1"]), None)

"""The `dit_graphs` stage of bench/gpu_check.py: the DiT step replayed from CUDA graphs against eager.

Two caches of one random DiT (the chunk stages' shape) run the same chunks,
window filling then evicting: one eagerly, one through `--cuda-graphs`
(inference/models/dit_step.py). Every DiT call's output must agree; one
steady chunk of each runs under `torch.cuda.set_sync_debug_mode("error")`,
which fails on any host-device synchronisation; ms per chunk of both are
reported. In a dry run (CPU, no graphs) the graphed side is the static-buffer
replay (`ReplayedStep`), which checks that every per-call value reaches the
step as a tensor.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_chunk import random_dit  # noqa: E402
from bench.gpu_stages import BF16_REL, CheckRun, StageFailed, model_config, rel_l2, sync  # noqa: E402
from inference.models.dit import ChunkCamera  # noqa: E402
from inference.models.dit_step import ReplayedStep, make_step  # noqa: E402
from inference.models.sampler import FlowMatchSampler  # noqa: E402

FP32_STEP_REL = 1e-5  # float32, same kernels, other buffers: rounding only


def no_sync(device: torch.device, enabled: bool):
    """Raise on any host-device synchronisation inside the block (CUDA), else nothing."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def mode():
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return mode()


class Side:
    """One cache driven chunk by chunk through a given step."""

    def __init__(self, dit, frame_seqlen: int, context: torch.Tensor, step, static: bool):
        self.dit, self.step, self.static = dit, step, static
        self.cache = dit.new_cache(capacity=1, frame_seqlen=frame_seqlen)
        dit.set_prompt(self.cache, 0, context)

    def chunk(self, index: int, xs: list[torch.Tensor], y, control, sampler) -> list[torch.Tensor]:
        """4 denoising calls (inputs xs) + the keys-only update, as the pipeline runs them; returns the 4 flows
        and the layer-0 and last-layer keys the chunk left in the cache."""
        camera, device, flows = ChunkCamera(control), y.device, []
        for step, x in enumerate(xs[:sampler.num_steps]):
            t = sampler.timestep(step, 1, device)
            flows.append(self.dit(x, y, t, camera, self.cache, [3 * index], [0], step=self.step, static=self.static))
        clean = torch.zeros(1, dtype=torch.int64, device=device)
        self.dit(xs[-1], y, clean, camera, self.cache, [3 * index], [0], step=self.step, static=self.static,
                 keys_only=True)
        return flows + [self.cache.self_kv.k[0].clone(), self.cache.self_kv.k[-1].clone()]


@torch.no_grad()
def dit_graphs(run: CheckRun) -> dict:
    """Eager vs CUDA-graph-replayed DiT chunks: equal outputs and cached keys, no host sync in a chunk, ms per
    chunk."""
    config = model_config(run)
    dtype = torch.float32 if run.dry_run else torch.bfloat16
    width, height = run.size
    h, w = height // 8, width // 8
    dit = random_dit(config, run.device, dtype)
    graphs = run.device.type == "cuda"
    step = make_step(dit, cuda_graphs=True) if graphs else ReplayedStep(dit.step)
    g = torch.Generator(device=run.device).manual_seed(0)
    context = torch.randn(min(120, config.text_len), config.text_dim, device=run.device, generator=g)
    sides = {"eager": Side(dit, (h // 2) * (w // 2), context, None, False),
             "graphs": Side(dit, (h // 2) * (w // 2), context, step, True)}
    sampler = FlowMatchSampler()
    fill = -(-config.local_attn_size // 3) + 1
    worst, times = 0.0, {name: [] for name in sides}
    for index in range(fill + run.iters):
        xs = [torch.randn(1, 16, 3, h, w, device=run.device, generator=g) for _ in range(sampler.num_steps + 1)]
        y = torch.randn(1, 20, 3, h, w, device=run.device, generator=g)
        control = torch.randn(1, config.control_channels, 3, h, w, device=run.device, generator=g)
        flows = {}
        for name, side in sides.items():
            sync(run.device)
            t0 = time.perf_counter()
            with no_sync(run.device, index >= fill):  # captured by then: replays and host work only
                flows[name] = side.chunk(index, xs, y, control, sampler)
            sync(run.device)
            if index >= fill:
                times[name].append((time.perf_counter() - t0) * 1000)
        worst = max(worst, *(rel_l2(a.float(), b.float()) for a, b in zip(flows["graphs"], flows["eager"])))
    bound = FP32_STEP_REL if dtype == torch.float32 else BF16_REL["call"]
    figures = {"graphs": graphs, "calls": 5 * (fill + run.iters), "flow_and_keys_rel_max": worst,
               "captures": getattr(step, "captures", None), "eager_ms": min(times["eager"]),
               "graphs_ms": min(times["graphs"]), "sync_checked": graphs}
    what = "CUDA graphs" if graphs else "static-buffer replay (no CUDA: capture not tried)"
    figures["summary"] = (f"{what} vs eager over {figures['calls']} calls: rel {worst:.1e}; "
                          f"{figures['eager_ms']:.1f} -> {figures['graphs_ms']:.1f} ms/chunk"
                          f"{f', {step.captures} captures, no host sync in a steady chunk' if graphs else ''}")
    if worst > bound:
        raise StageFailed(f"graphed DiT calls differ from eager: rel {worst:.2e} > {bound:.0e}")
    return figures

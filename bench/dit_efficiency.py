"""How close a steady-state DiT chunk runs to this machine's matmul peak, float32 and bfloat16, eager and compiled.

    python bench/dit_efficiency.py [--chunks 5] [--dtypes float32,bfloat16] [--compile off,on] [--profile]

One run measures, with the threads torch uses: the GEMM peak (large square
matmuls, best of several), the same for the DiT's own linear shapes, and
ms per steady-state chunk (window full, 4 denoising calls + 1 cache update)
of the issue-14 config: dim 512, 8 heads, 4 layers, ffn 1536, text 512
tokens, window 10 latent frames (9 + 1 sink), latent 12x20 (60 tokens per
latent frame), chunks of 3 latent frames, random weights. FLOPs per chunk
are counted from the matmul and attention shapes; % of peak = achieved
FLOP/s / GEMM peak. Prints the load average next to the numbers (a shared
CPU only adds time: the minimum over chunks is the figure to compare).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.lingbot.pipeline import ChunkPipeline, ChunkRequest  # noqa: E402
from inference.lingbot.session import SessionStream  # noqa: E402
from inference.models.checkpoint import load_dit_checkpoint  # noqa: E402
from inference.models.config import DiTConfig  # noqa: E402
from inference.models.dit import CausalDiT  # noqa: E402
from inference.models.vae import SPACE_STRIDE, WanVAE  # noqa: E402
from inference.tools.make_tiny_checkpoint import tiny_vae_config  # noqa: E402

LATENT_H, LATENT_W, CHUNK = 12, 20, 3  # latent 12x20, patches of 2x2: 60 tokens per latent frame
WINDOW, SINK = 10, 1


def issue_config() -> DiTConfig:
    return DiTConfig(dim=512, ffn_dim=1536, num_heads=8, num_layers=4, text_len=512, text_dim=4096,
                     local_attn_size=WINDOW, sink_size=SINK)


def best_seconds(fn, min_total_s: float = 0.4, min_reps: int = 3) -> float:
    """Fastest of repeated calls (load on a shared CPU only adds time)."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_total_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_peak(dtype: torch.dtype, sizes=(1024, 2048)) -> float:
    """Best GFLOP/s of square matmuls n x n x n."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        best = max(best, 2 * n**3 / best_seconds(lambda: torch.mm(a, b)) / 1e9)
    return best


def linear_shapes(config: DiTConfig, tokens: int) -> dict[str, tuple[int, int, int]]:
    """(M, K, N) of the DiT block linears for `tokens` tokens."""
    d, f = config.dim, config.ffn_dim
    return {"d->d (q,k,v,o,cam)": (tokens, d, d), "d->3d (fused qkv)": (tokens, d, 3 * d),
            "d->ffn": (tokens, d, f), "ffn->d": (tokens, f, d)}


def shape_rates(config: DiTConfig, tokens: int, dtype: torch.dtype) -> dict[str, float]:
    """GFLOP/s of F.linear (with bias) at the model's own shapes."""
    rates = {}
    for name, (m, k, n) in linear_shapes(config, tokens).items():
        x, w, b = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype), torch.randn(n).to(dtype)
        rates[name] = 2 * m * k * n / best_seconds(lambda: torch.nn.functional.linear(x, w, b)) / 1e9
    return rates


def chunk_flops(config: DiTConfig, tokens: int, keys: int, calls: int) -> float:
    """Matmul + attention FLOPs of one chunk: `calls` DiT calls of `tokens` tokens attending `keys` keys."""
    d, f, layers = config.dim, config.ffn_dim, config.num_layers
    per_token_layer = 2 * (4 * d * d + 4 * d * d + 2 * d * d + 2 * d * f)  # self qkvo, camera 4, cross q/o, ffn
    attention = 4 * d * (keys + config.text_len)  # QK^T and PV, self + cross, per token and layer
    embed = 2 * (config.in_dim * config.patch_volume * d + config.control_channels * config.patch_volume * d
                 + 2 * d * d + d * config.out_dim * config.patch_volume)
    return calls * tokens * (layers * (per_token_layer + attention) + embed)


def build(config: DiTConfig, dtype: torch.dtype, model_dir: str) -> CausalDiT:
    if model_dir:
        return load_dit_checkpoint(Path(model_dir), dtype=dtype)
    torch.manual_seed(0)
    model = CausalDiT(config).eval().requires_grad_(False)
    return model.to(dtype).keep_islands_float32()


def session(model: CausalDiT, vae: WanVAE, slot: int) -> SessionStream:
    height, width = LATENT_H * SPACE_STRIDE, LATENT_W * SPACE_STRIDE
    return SessionStream(session_id=f"s{slot}", prompt="bench", seed=slot, width=width, height=height,
                         image=torch.zeros(1, 3, 1, height, width), vae=vae, control_type=model.config.control_type,
                         chunk_latents=CHUNK, slot=slot, decode=False)


class ChunkRunner:
    """Steady-state chunks of one session through the product's denoising loop (ChunkPipeline.denoise)."""

    def __init__(self, model: CausalDiT, batch: int = 1):
        cfg = model.config
        self.pipeline = ChunkPipeline(model, decode=False)
        self.cache = model.new_cache(capacity=batch, frame_seqlen=self.frame_seqlen(cfg))
        vae = WanVAE(tiny_vae_config())
        self.sessions = [session(model, vae, slot) for slot in range(batch)]
        g = torch.Generator().manual_seed(1)
        for s in self.sessions:
            model.set_prompt(self.cache, s.slot, torch.randn(cfg.text_len, cfg.text_dim, generator=g))
        self.y = torch.randn(batch, 20, CHUNK, LATENT_H, LATENT_W, generator=g)
        self.control = torch.randn(batch, cfg.control_channels, CHUNK, LATENT_H, LATENT_W, generator=g)

    @staticmethod
    def frame_seqlen(cfg: DiTConfig) -> int:
        return (LATENT_H // cfg.patch_size[1]) * (LATENT_W // cfg.patch_size[2])

    def chunk(self) -> float:
        """One chunk; returns its milliseconds."""
        requests = [ChunkRequest(session=s, poses=None, keys=None) for s in self.sessions]
        t0 = time.perf_counter()
        self.pipeline.denoise(self.cache, requests, self.y, self.control)
        ms = (time.perf_counter() - t0) * 1000
        for s in self.sessions:
            s.latent_frames += CHUNK
        return ms


def compile_blocks(model: CausalDiT) -> None:
    """The naive compile: each block's forward under torch.compile (what the model allows today)."""
    for block in model.blocks:
        block.forward = torch.compile(block.forward)


def dynamo_figures() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values())}


def measure(model: CausalDiT, chunks: int, compiled: bool) -> dict:
    runner = ChunkRunner(model)
    if compiled:
        torch._dynamo.reset()
        compile_blocks(model)
    warm = -(-WINDOW // CHUNK) + 1  # until the window is full and evicting
    for _ in range(warm):
        runner.chunk()
    before = dynamo_figures() if compiled else {}
    times = [runner.chunk() for _ in range(chunks)]
    out = {"min_ms": min(times), "median_ms": statistics.median(times)}
    if compiled:
        after = dynamo_figures()
        out["dynamo"] = after
        out["recompiles_steady"] = after["frames"] - before["frames"]
    return out


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def profile_chunk(model: CausalDiT, rows: int = 18) -> None:
    runner = ChunkRunner(model)
    for _ in range(-(-WINDOW // CHUNK) + 1):
        runner.chunk()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        runner.chunk()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=5, help="timed steady-state chunks per setting")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--compile", default="off,on", help="off, on or both")
    ap.add_argument("--model-dir", default="", help="a DiT folder (config.json + safetensors) instead of random weights")
    ap.add_argument("--profile", action="store_true", help="print an op profile of one eager chunk per dtype")
    args = ap.parse_args(argv)
    config = issue_config()
    threads = torch.get_num_threads()
    frame_seqlen = ChunkRunner.frame_seqlen(config)
    tokens, keys = CHUNK * frame_seqlen, WINDOW * frame_seqlen
    flops = chunk_flops(config, tokens, keys, calls=5)
    print(f"torch {torch.__version__}, {threads} threads, cpu capability {torch.backends.cpu.get_cpu_capability()}; "
          f"{load()}")
    print(f"config: dim {config.dim}, {config.num_heads} heads, {config.num_layers} layers, ffn {config.ffn_dim}, "
          f"window {WINDOW} (sink {SINK}), {frame_seqlen} tokens/latent frame, chunk {tokens} tokens x {keys} keys, "
          f"{flops / 1e9:.1f} GFLOP per chunk (4 steps + update)")
    rows = []
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        peak = gemm_peak(dtype)
        shapes = shape_rates(config, tokens, dtype)
        print(f"\n{name}: GEMM peak {peak:.0f} GFLOP/s ({load()}); DiT linear shapes at M={tokens}: "
              + ", ".join(f"{k} {v:.0f} ({100 * v / peak:.0f}%)" for k, v in shapes.items()))
        model = build(config, dtype, args.model_dir)
        if args.profile:
            profile_chunk(model)
        for mode in args.compile.split(","):
            got = measure(build(config, dtype, args.model_dir) if mode == "on" else model, args.chunks, mode == "on")
            rate = flops / (got["min_ms"] / 1000) / 1e9
            extra = (f", recompiles in steady chunks {got['recompiles_steady']}, dynamo {got['dynamo']}"
                     if "dynamo" in got else "")
            rows.append((name, mode, got["min_ms"], got["median_ms"], rate, 100 * rate / peak))
            print(f"  compile {mode:3s}: {got['min_ms']:7.1f} ms/chunk min, {got['median_ms']:7.1f} median, "
                  f"{rate:6.0f} GFLOP/s = {100 * rate / peak:4.1f}% of peak{extra} ({load()})")
    print("\ndtype     compile  min_ms  median_ms  GFLOP/s  %peak")
    for name, mode, lo, med, rate, pct in rows:
        print(f"{name:9s} {mode:7s} {lo:7.1f}  {med:9.1f}  {rate:7.0f}  {pct:5.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

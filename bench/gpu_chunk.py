"""One-shot GPU timing of a steady-state LingBot-World-Fast chunk (A14B DiT shape, random bf16 weights) and its VAE.

    python bench/gpu_chunk.py [--layers 40] [--size 832*480] [--window 12 --sink 3] [--iters 3]
    python bench/gpu_chunk.py --dry-run      # tiny config on CPU, end to end, to check the script

Builds the real DiT shape (dim 5120, ffn 13824, 40 heads) with random
weights; with `--layers N` < 40 it builds N blocks and scales the DiT time
and FLOPs to 40 layers (said in the output). Fills the KV window (window
mode, `window` latent frames with `sink` pinned), then times whole chunks:
4 denoising steps + the t=0 cache update, with CUDA events after warm-up.
The time embedding, time projection and head stay float32, as in the
engine. Then the real Wan2.1 VAE (random weights, float32 as the engine
loads it): streaming decode of one steady-state chunk (3 latents -> 12
frames) and the condition encode of 12 black frames. Prints ms, achieved TFLOP/s, the fraction of the chip's
dense bf16 peak (table below, keyed by GPU name), attention backend, and
peak memory.

Matmul FLOPs of one DiT forward (multiply-add = 2 FLOPs), L query tokens of
the chunk, K attended keys, T = text_len, D = dim, Fd = ffn_dim, P =
patch volume (4), per block:
  self q,k,v,o 8 L D^2 + attention 4 L K D + cross q,o 4 L D^2 + cross
  attention 4 L T D + camera injector/scale/shift 8 L D^2 + FFN 4 L D Fd;
once: latent patch embed 2 L (36 P) D + camera patch embed 2 L (384 P) D
+ camera MLP 4 L D^2 + head 2 L D (16 P). A chunk is 5 forwards (4 steps +
update), all with the same L and K (text K/V are cached per prompt).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.models.attention import attention_backend  # noqa: E402
from inference.models.config import DiTConfig  # noqa: E402
from inference.models.dit import CausalDiT  # noqa: E402
from inference.models.sampler import FlowMatchSampler  # noqa: E402
from inference.models.vae import StreamingDecoder, StreamingEncoder, VAEConfig, WanVAE  # noqa: E402

REAL_LAYERS = 40
# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, matched by substring of the device name (first match wins).
BF16_DENSE_PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10G", 70.0),
    ("RTX 4090", 165.0), ("A6000", 155.0),
)


def dit_forward_flops(c: DiTConfig, tokens: int, keys: int) -> float:
    d, p = c.dim, c.patch_volume
    block = (8 * tokens * d * d + 4 * tokens * keys * d + 4 * tokens * d * d + 4 * tokens * c.text_len * d
             + 8 * tokens * d * d + 4 * tokens * d * c.ffn_dim)
    once = (2 * tokens * c.in_dim * p * d + 2 * tokens * c.control_channels * p * d + 4 * tokens * d * d
            + 2 * tokens * d * c.out_dim * p)
    return c.num_layers * block + once


def chip_peak(name: str) -> tuple[str, float | None]:
    for key, peak in BF16_DENSE_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return key, peak
    return "unknown", None


def random_dit(config: DiTConfig, device: torch.device, dtype: torch.dtype) -> CausalDiT:
    """The DiT shape with N(0, 0.02) weights (norm weights 1), built directly on the device."""
    with torch.device("meta"):
        model = CausalDiT(config)
    model = model.to(dtype).keep_islands_float32().to_empty(device=device)  # allocated once, in the engine's dtypes
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or ".norm3." in name:
                p.fill_(1.0) if name.endswith("weight") else p.zero_()
            else:
                p.normal_(0.0, 0.02)
    model.rebuild_buffers(device)
    return model.eval().requires_grad_(False)


class Clock:
    """Milliseconds between two points: CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, begin) -> float:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            torch.cuda.synchronize()
            return begin.elapsed_time(end)
        return (time.perf_counter() - begin) * 1000


@torch.no_grad()
def one_chunk(dit, sampler, cache, start_frame, y, control, latent_shape, device) -> torch.Tensor:
    x = torch.randn(latent_shape, device=device)  # (1, 16, 3, h, w)
    for step in range(sampler.num_steps):
        flow = dit(x, y, sampler.timestep(step, 1, device), control, cache, [start_frame], [0])
        x0 = sampler.to_x0(step, x, flow.float())
        if step + 1 < sampler.num_steps:
            x = sampler.renoise(step + 1, x0, torch.randn_like(x0))
    dit(x0, y, torch.zeros(1, dtype=torch.int64, device=device), control, cache, [start_frame], [0])
    return x0


def time_dit(args, config, device, dtype, width, height) -> tuple[CausalDiT, float, float, float]:
    """Returns (model, ms per chunk, FLOPs per chunk, window keys) at a full window."""
    dit = random_dit(config, device, dtype)
    h, w = height // 8, width // 8
    frame_seqlen = (h // 2) * (w // 2)
    cache = dit.new_cache(capacity=1, frame_seqlen=frame_seqlen, local_attn_size=args.window, sink_size=args.sink)
    dit.set_prompt(cache, 0, torch.randn(min(120, config.text_len), config.text_dim, device=device))
    sampler = FlowMatchSampler()
    y = torch.randn(1, 20, 3, h, w, device=device)
    control = torch.randn(1, config.control_channels, 3, h, w, device=device)
    fill = -(-args.window // 3) + args.warmup  # chunks until the window is full, plus warm-up chunks
    for c in range(fill):
        one_chunk(dit, sampler, cache, 3 * c, y, control, (1, 16, 3, h, w), device)
    keys = cache.self_kv.local_end[0]
    clock, times = Clock(device), []
    for c in range(fill, fill + args.iters):
        begin = clock.start()
        one_chunk(dit, sampler, cache, 3 * c, y, control, (1, 16, 3, h, w), device)
        times.append(clock.stop(begin))
    q = torch.empty(1, 3 * frame_seqlen, config.num_heads, config.head_dim, device=device, dtype=dtype)
    print(f"attention backend: {attention_backend(q, q)} (dtype {dtype}, head_dim {config.head_dim})")
    flops = 5 * dit_forward_flops(config, 3 * frame_seqlen, keys)
    print(f"DiT chunk times (ms): {', '.join(f'{t:.1f}' for t in times)}; attended keys {keys} "
          f"({keys // frame_seqlen} latent frames), query tokens {3 * frame_seqlen}")
    return dit, min(times), flops, keys


@torch.no_grad()
def time_vae(vae_config, device, width, height, iters) -> tuple[float, float]:
    vae = WanVAE(vae_config).to(device=device, dtype=torch.float32).eval()  # the engine's VAE dtype on every device
    h, w = height // 8, width // 8
    decoder, encoder, clock = StreamingDecoder(vae), StreamingEncoder(vae), Clock(device)
    decoder.decode_chunk(torch.randn(1, 16, 3, h, w, device=device))  # first chunk (1 + 4 + 4 frames)
    encoder.encode_chunk(torch.zeros(1, 3, 9, height, width, device=device))
    decode, encode = [], []
    for _ in range(iters + 1):
        begin = clock.start()
        decoder.decode_chunk(torch.randn(1, 16, 3, h, w, device=device))
        decode.append(clock.stop(begin))
        begin = clock.start()
        encoder.encode_chunk(torch.zeros(1, 3, 12, height, width, device=device))
        encode.append(clock.stop(begin))
    return min(decode[1:]), min(encode[1:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=REAL_LAYERS, help="DiT blocks to build (time scaled to 40)")
    ap.add_argument("--size", default="832*480", help="W*H")
    ap.add_argument("--window", type=int, default=12, help="KV window, latent frames")
    ap.add_argument("--sink", type=int, default=3, help="pinned latent frames")
    ap.add_argument("--warmup", type=int, default=2, help="extra untimed chunks after the window is full")
    ap.add_argument("--iters", type=int, default=3, help="timed chunks (the minimum is reported)")
    ap.add_argument("--skip-vae", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="tiny config at 64*48 on CPU float32")
    args = ap.parse_args(argv)
    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
        config = DiTConfig.tiny(local_attn_size=args.window, sink_size=args.sink)
        vae_config, args.size, real_layers = VAEConfig(dim=4, num_res_blocks=1), "64*48", config.num_layers
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run to check the script on CPU")
        device, dtype = torch.device("cuda"), torch.bfloat16
        config = DiTConfig.a14b_fast(num_layers=args.layers, local_attn_size=args.window, sink_size=args.sink)
        vae_config, real_layers = VAEConfig.wan21(), REAL_LAYERS
    width, height = (int(v) for v in args.size.split("*"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    key, peak = chip_peak(name)
    print(f"device {name}; torch {torch.__version__}; size {args.size}; window {args.window}/sink {args.sink}; "
          f"DiT dim {config.dim}, {config.num_layers} layers built")
    dit, ms, flops, _ = time_dit(args, config, device, dtype, width, height)
    scale = real_layers / config.num_layers
    tflops = flops / (ms / 1000) / 1e12
    note = f" (measured on {config.num_layers} layers, time and FLOPs scaled x{scale:.2f} to {real_layers})" \
        if scale != 1 else ""
    print(f"DiT steady-state chunk (4 steps + update): {ms * scale:.1f} ms{note}")
    print(f"DiT matmul FLOPs per chunk: {flops * scale / 1e12:.2f} TFLOP; achieved {tflops:.1f} TFLOP/s")
    if peak:
        print(f"assumed dense bf16 peak for '{key}': {peak:.0f} TFLOP/s -> {tflops / peak:.1%} of peak")
    else:
        print(f"no peak on record for {name!r}: fraction of peak not computed")
    del dit
    if not args.skip_vae:
        decode_ms, encode_ms = time_vae(vae_config, device, width, height, args.iters)
        print(f"VAE steady chunk decode (3 latents -> 12 frames): {decode_ms:.1f} ms; condition encode of 12 "
              f"black frames (only until the condition reaches its steady state): {encode_ms:.1f} ms")
        print(f"chunk = 12 frames = {12 / 16 * 1000:.0f} ms of video at 16 fps; DiT + decode "
              f"{ms * scale + decode_ms:.1f} ms -> {(12 / 16 * 1000) / (ms * scale + decode_ms):.2f}x real time")
    if device.type == "cuda":
        print(f"peak memory allocated: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

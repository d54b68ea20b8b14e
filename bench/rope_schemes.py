"""Re-anchoring RoPE positions: the shift invariant, what sink frames change, and the cost of two schemes.

    python bench/rope_schemes.py [--chunks 30] [--latent 16x28] [--skip-sink]

1. Invariant: attention with every query and key position moved by the same
   amount, against the bound "4 float32 ulp of the largest logit times max |v|".
2. Sink: a tiny random DiT streamed past the reference's 1024-frame table
   (re-anchored) against the same stream with a 4096-frame table (never
   re-anchored), for 0, 1 and 3 sink frames, float32 and bfloat16: the largest
   relative difference of the flow predictions before and after the table's end.
3. Schemes, measured on the tiny config (CPU, one run, DiT only):
   A re-rotates the kept cached keys when the frame of reference moves (what
     the cache does); measured with the reference table (never moves) and with
     a 15-frame table (moves every second chunk, the worst case);
   B keeps keys unrotated in the cache and rotates the whole attended window
     in every forward (the streaming-LLM way), installed here by swapping the
     self-attention class of each block.
   Then the same costs by arithmetic for DiTConfig.a14b_fast() at 832x480.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.models.attention import attention  # noqa: E402
from inference.models.config import DiTConfig  # noqa: E402
from inference.models.dit import CausalDiT  # noqa: E402
from inference.models.dit_blocks import CausalSelfAttention  # noqa: E402
from inference.models.rope import RotaryTables, apply_rotary  # noqa: E402

FLOAT32_ULP = 2.0 ** -23
WINDOW, SINK, CHUNK = 12, 3, 3


def invariant_table() -> None:
    print("1. shift invariant: attention(q at p+D, k at p+D) vs (q at p, k at p), head_dim 128, 4 heads, float32")
    g = torch.Generator().manual_seed(1)
    head_dim = 128
    q = torch.randn(1, 18, 4, head_dim, generator=g) * 3  # (B, L, heads, head_dim)
    k = torch.randn(1, 72, 4, head_dim, generator=g) * 3
    v = torch.randn(1, 72, 4, head_dim, generator=g)
    rope = RotaryTables(head_dim, frame_positions=8192)
    logit = (q.norm(dim=-1).max() * k.norm(dim=-1).max() / math.sqrt(head_dim)).item()
    unit = FLOAT32_ULP * logit * v.abs().max().item()  # one ulp of the largest logit, times max |v|

    def run(start: int) -> torch.Tensor:
        cos_k, sin_k = rope.for_grid((12, 2, 3), [start])
        cos_q, sin_q = rope.for_grid((3, 2, 3), [start + 9])
        return attention(apply_rotary(q, cos_q, sin_q), apply_rotary(k, cos_k, sin_k), v)

    base = run(0)
    print(f"   largest logit {logit:.1f}, max|v| {v.abs().max():.2f}; bound 4 units, unit = ulp(logit)*max|v| "
          f"= {unit:.2e}")
    print("   shift D   max|diff|    in units")
    for shift in (1, 10, 100, 1000, 4096, 8000):
        err = (run(shift) - base).abs().max().item()
        print(f"   {shift:7d}   {err:.3e}   {err / unit:6.3f}")


def stream_outputs(model: CausalDiT, *, rope_frames: int, sink: int, chunks: int, dtype: torch.dtype
                   ) -> list[torch.Tensor]:
    """Flow predictions (one noisy call + the clean update per chunk) of a tiny DiT on fixed random inputs."""
    model.set_rope_frames(rope_frames)
    model.to(dtype)
    cache = model.new_cache(capacity=1, frame_seqlen=6, local_attn_size=sink + 9, sink_size=sink)
    model.set_prompt(cache, 0, torch.randn(5, 32, generator=torch.Generator().manual_seed(1)))
    outputs = []
    for c in range(chunks):
        g = torch.Generator().manual_seed(100 + c % 7)
        x, y = torch.randn(1, 16, 3, 4, 6, generator=g), torch.randn(1, 20, 3, 4, 6, generator=g)
        control = torch.randn(1, 384, 3, 4, 6, generator=g)
        out = model(x, y, torch.tensor([999.0]), control, cache, start_frames=[3 * c])
        model(out, y, torch.tensor([0.0]), control, cache, start_frames=[3 * c])
        outputs.append(out.float())
    return outputs


@torch.no_grad()
def sink_table() -> None:
    print("\n2. re-anchored (table 1024) vs unlimited (table 4096) tiny DiT stream, window = sink + 9 frames;")
    print("   max |diff| / max |out| of each chunk's flow prediction; chunk 341 (frames 1023-1025) is the first past")
    torch.manual_seed(0)
    model = CausalDiT(DiTConfig.tiny(text_dim=32)).eval()
    chunks, first_past = 352, 341
    print("   dtype     sink  chunks 0-340   chunk 341   chunks 342-351 (max)")
    for dtype in (torch.float32, torch.bfloat16):
        for sink in (0, 1, 3):
            short = stream_outputs(model, rope_frames=1024, sink=sink, chunks=chunks, dtype=dtype)
            unlimited = stream_outputs(model, rope_frames=4096, sink=sink, chunks=chunks, dtype=dtype)
            rel = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(short, unlimited)]
            print(f"   {str(dtype).removeprefix('torch.'):9s} {sink:4d}  {max(rel[:first_past]):12.1e}   "
                  f"{rel[first_past]:9.1e}   {max(rel[first_past + 1:]):9.1e}")
    model.float()


class KeysRotatedAtAttention(CausalSelfAttention):
    """Scheme B: the cache holds unrotated keys; each forward rotates the attended window at cache-relative frames."""

    tables: RotaryTables
    grid_hw: tuple[int, int]

    def forward(self, x, rope, cache, layer, plan):
        batch, length, _ = x.shape
        x = x.to(self.q.weight.dtype)
        q = self.norm_q(self.q(x)).view(batch, length, self.num_heads, self.head_dim)
        k = self.norm_k(self.k(x)).view(batch, length, self.num_heads, self.head_dim)
        v = self.v(x).view(batch, length, self.num_heads, self.head_dim)
        fs = cache.frame_seqlen
        h, w = self.grid_hw
        q = apply_rotary(q, *self.tables.for_grid((length // fs, h, w), [plan.write.start // fs]))
        k_window, v_window, mask = cache.store(layer, plan, k, v)  # (B, Lk, heads, head_dim), unrotated
        frames = (plan.read.stop - plan.read.start) // fs
        k_window = apply_rotary(k_window, *self.tables.for_grid((frames, h, w), [plan.read.start // fs]))
        out = attention(q, k_window, v_window.to(q.dtype), mask)
        return self.o(out.flatten(2))


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


@torch.no_grad()
def time_scheme(model: CausalDiT, *, scheme: str, rope_frames: int, chunks: int, lat: tuple[int, int]) -> tuple:
    """10th-percentile ms per chunk (4 steps + update) after the window filled (load only adds time), and the
    peak RSS rise over the run."""
    model.set_rope_frames(rope_frames)
    for block in model.blocks:
        block.self_attn.__class__ = KeysRotatedAtAttention if scheme == "B" else CausalSelfAttention
        block.self_attn.tables, block.self_attn.grid_hw = model.rope, (lat[0] // 2, lat[1] // 2)
    fs = (lat[0] // 2) * (lat[1] // 2)
    cache = model.new_cache(capacity=1, frame_seqlen=fs, local_attn_size=WINDOW, sink_size=SINK)
    model.set_prompt(cache, 0, torch.randn(5, 32, generator=torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(1, 16, 3, *lat, generator=g), torch.randn(1, 20, 3, *lat, generator=g)
    control = torch.randn(1, 384, 3, *lat, generator=g)
    times, outs = [], []
    reset_peak_rss()
    base = peak_rss_mb()
    for c in range(chunks):
        start = time.perf_counter()
        for t in (999.0, 957.0, 900.0, 700.0):
            out = model(x, y, torch.tensor([t]), control, cache, start_frames=[3 * c])
        model(out, y, torch.tensor([0.0]), control, cache, start_frames=[3 * c])
        times.append((time.perf_counter() - start) * 1000)
        outs.append(out)
    for block in model.blocks:
        block.self_attn.__class__ = CausalSelfAttention
    steady = sorted(times[4:])
    return steady[int(0.1 * (len(steady) - 1))], peak_rss_mb() - base, outs


def scheme_table(chunks: int, lat: tuple[int, int]) -> None:
    print(f"\n3. schemes on the tiny config, latent {lat[0]}x{lat[1]} ({(lat[0] // 2) * (lat[1] // 2)} tokens/frame), "
          f"window {WINDOW}/sink {SINK}, {chunks} chunks of 4 steps + update, CPU float32, DiT only")
    torch.manual_seed(0)
    model = CausalDiT(DiTConfig.tiny(text_dim=32)).eval()
    rows = [("A, table 1024 (never moves)", "A", 1024), ("A, table 15 (moves every 2nd chunk)", "A", 15),
            ("B, rotate window every forward", "B", 1024)]
    results = {}
    for name, scheme, frames in rows:
        ms, rss, outs = time_scheme(model, scheme=scheme, rope_frames=frames, chunks=chunks, lat=lat)
        results[name] = (ms, rss, outs)
    base = results[rows[0][0]][0]
    print("   scheme                             p10 ms/chunk   vs A   peak RSS rise MiB")
    for name, (ms, rss, _) in results.items():
        print(f"   {name:38s} {ms:8.1f}  {ms / base:5.2f}   {rss:8.1f}")
    a, b = results[rows[0][0]][2], results[rows[2][0]][2]
    same = all(torch.equal(x, y) for x, y in zip(a[:4], b[:4]))
    print(f"   B equals A bit for bit while the window fills (chunks 0-3): {same}")


def a14b_arithmetic() -> None:
    cfg = DiTConfig.a14b_fast()
    fs = (480 // 16) * (832 // 16)  # tokens per latent frame at 832x480 (VAE /8, patch /2)
    heads, hd, layers = cfg.num_heads, cfg.head_dim, cfg.num_layers
    frame_ch = hd - 4 * (hd // 6)  # frame-axis channels of each head
    keys, kept = WINDOW * fs, (WINDOW - SINK - CHUNK) * fs
    forwards, eager_bytes, hbm = 5, 52, 4.8e12  # eager float32 rotation moves ~52 B per bf16 element; H200 HBM
    period = (1024 - WINDOW + CHUNK) // CHUNK  # chunks between re-anchorings after the first
    a_elems = kept * heads * frame_ch * layers
    b_elems = keys * heads * frame_ch * layers * forwards  # even when only the frame axis is left unrotated
    print(f"\n4. arithmetic, A14B-fast at 832x480: {fs} tokens/frame, window {WINDOW} = {keys} keys, "
          f"{layers} layers x {heads} heads x {hd} (frame axis {frame_ch} channels), bf16")
    print(f"   A: per re-anchoring {a_elems / 1e9:.2f} G elements ({a_elems * eager_bytes / 1e9:.0f} GB moved, "
          f"~{a_elems * eager_bytes / hbm * 1e3:.0f} ms), once per {period} chunks after frame 1024 -> "
          f"~{a_elems * eager_bytes / hbm * 1e3 / period:.2f} ms/chunk; transient one frame of one layer "
          f"({fs * heads * frame_ch * 4 * 6 / 2**20:.0f} MiB float32 temporaries); persistent 0")
    print(f"   B: per chunk {b_elems / 1e9:.1f} G elements ({b_elems * eager_bytes / 1e9:.0f} GB moved, "
          f"~{b_elems * eager_bytes / hbm * 1e3:.0f} ms) every chunk from the first; transient a rotated window per "
          f"layer ({keys * heads * hd * 2 / 2**20:.0f} MiB bf16 + {keys * heads * frame_ch * 4 * 6 / 2**20:.0f} MiB "
          f"float32 temporaries); FA2/FA3 cannot rotate 3-D RoPE keys inside the kernel")
    linear = 2 * 4680 * sum(p for p in (4 * cfg.dim ** 2, 4 * cfg.dim ** 2, 2 * cfg.dim * cfg.ffn_dim,
                                         4 * cfg.dim ** 2)) * layers
    attn = 4 * 3 * fs * keys * cfg.dim * layers
    print(f"   for scale: one chunk is ~{forwards * (linear + attn) / 1e15:.2f} PFLOP (~{forwards * (linear + attn) / 5e14:.1f} s "
          f"at 500 TFLOP/s on one GPU)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=30, help="chunks per scheme timing run")
    ap.add_argument("--latent", default="16x28", help="latent grid HxW of the scheme timing (832x480 is 60x104)")
    ap.add_argument("--skip-sink", action="store_true", help="skip the 1024-frame sink comparison (~1 min)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    invariant_table()
    if not args.skip_sink:
        sink_table()
    scheme_table(args.chunks, tuple(int(v) for v in args.latent.split("x")))
    a14b_arithmetic()


if __name__ == "__main__":
    main()

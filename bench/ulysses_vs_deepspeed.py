"""Our Ulysses all-to-all (inference/distributed/ulysses.py) against DeepSpeed's `DistributedAttention`.

    python -m torch.distributed.run --standalone --nproc_per_node=2 bench/ulysses_vs_deepspeed.py [--calls 7]

Both run the same local attention (torch SDPA) on the same random q/k/v
shards in our (B, L/P, heads, head_dim) layout: DeepSpeed with
scatter_idx=2 (heads), gather_idx=1 (tokens), batch_dim_idx=0. For each size
the script checks that the outputs agree (max abs diff against each other
and against one-rank attention), times the whole attention and the
all-to-alls alone (median of --calls calls after --warmup, ours and
DeepSpeed's interleaved; each call ends with a barrier so the slower rank
counts), and counts the bytes each rank
sends per call analytically: 4 all-to-alls (q, k, v in, output back) of
the rank's whole shard, of which (P-1)/P leaves the rank, the same for both.
Sizes are the 480*832 chunk's 1560 tokens per latent frame and 9360 (six
frames), scaled down (--scale) so that a 2-core CPU finishes. Without
DeepSpeed installed it says so and exits 0. CPU gloo numbers only: what a
GPU with NCCL does is for bench/gpu_chunk.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.distributed.ulysses import heads_to_tokens, tokens_to_heads  # noqa: E402

# (tokens per chunk before scaling, heads, head_dim)
SIZES = [(1560, 8, 64), (1560, 40, 128), (9360, 8, 64), (9360, 16, 128)]


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain SDPA on (B, L, H, D) tensors -> (B, L, H, D)."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


class LocalAttention(torch.nn.Module):
    def forward(self, q, k, v, *args, **kwargs):
        return local_attention(q, k, v)


def ours(q, k, v, group, ranks):
    q, k, v = (tokens_to_heads(t, group, ranks) for t in (q, k, v))
    return heads_to_tokens(local_attention(q, k, v), group, ranks)


def ours_comm(q, k, v, group, ranks):
    q, k, v = (tokens_to_heads(t, group, ranks) for t in (q, k, v))
    return heads_to_tokens(q, group, ranks)


def timed_pair(first, second, calls: int, warmup: int) -> tuple[float, float]:
    """Median ms of `calls` calls of each function after `warmup`, interleaved (order alternating) so that a
    busy neighbour on the machine slows both alike; each call ends at a barrier."""
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(calls):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            dist.barrier()
            start = time.perf_counter()
            (first, second)[which]()
            dist.barrier()
            times[which].append((time.perf_counter() - start) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def disk_mb(package: str) -> float:
    root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20


def odd_length(attn, rank: int) -> None:
    """DeepSpeed on a chunk of 9 tokens sharded 5 + 4 (no padding): the ranks' all-to-all sizes disagree.

    On gloo this aborts the process ("Received data size doesn't match
    expected size"), so it runs only with --odd-length, after the table.
    """
    q = torch.randn(1, 5 if rank == 0 else 4, 4, 8)
    attn(q, q, q, 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=int, default=4, help="divide the token counts by this (CPU time)")
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--odd-length", action="store_true",
                    help="at the end, feed DeepSpeed 9 tokens as 5 + 4 (expected to abort the ranks)")
    args = ap.parse_args()
    if importlib.util.find_spec("deepspeed") is None:
        if os.environ.get("RANK", "0") == "0":
            print("deepspeed is not importable here: nothing to compare (pip install deepspeed to run this bench)")
        return 0
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("WORLD_SIZE", "1"))))
    dist.init_process_group("gloo")
    rank, ranks = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(ranks)))
    t0 = time.perf_counter()
    import deepspeed  # timed: the import is part of what it costs
    from deepspeed.sequence.layer import DistributedAttention
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    deepspeed.init_distributed(dist_backend="gloo")  # finds the group already made (on CPU it builds a shm op)
    init_s = time.perf_counter() - t0
    ds = DistributedAttention(LocalAttention(), group, scatter_idx=2, gather_idx=1)
    rows = []
    for tokens, heads, head_dim in SIZES:
        length = tokens // args.scale // ranks * ranks
        local = length // ranks
        g = torch.Generator().manual_seed(tokens + heads + head_dim)
        full = [torch.randn(args.batch, length, heads, head_dim, generator=g) for _ in range(3)]
        q, k, v = (t[:, rank * local:(rank + 1) * local].contiguous() for t in full)
        out_ours = ours(q, k, v, group, ranks)
        out_ds = ds(q, k, v, 0)
        reference = local_attention(*full)[:, rank * local:(rank + 1) * local]
        diff = float((out_ours - out_ds).abs().max())
        err = max(float((out_ours - reference).abs().max()), float((out_ds - reference).abs().max()))
        ms_ours, ms_ds = timed_pair(lambda: ours(q, k, v, group, ranks), lambda: ds(q, k, v, 0), args.calls,
                                    args.warmup)
        comm_ours, comm_ds = timed_pair(lambda: ours_comm(q, k, v, group, ranks), lambda: ds_comm(ds, q, k, v),
                                        args.calls, args.warmup)
        shard = q.numel() * q.element_size()
        sent_mb = 4 * shard * (ranks - 1) / ranks / 2**20  # same for both: 4 all-to-alls of one shard each
        rows.append((length, heads, head_dim, diff, err, sent_mb, ms_ours, ms_ds, comm_ours, comm_ds))
    if rank == 0:
        print(f"{ranks} gloo ranks, batch {args.batch}, float32, tokens scaled by 1/{args.scale}, "
              f"median of {args.calls} interleaved calls after {args.warmup} warm-up")
        print(f"{'tokens':>6} {'heads':>5} {'hdim':>4} | {'|ours-ds|':>9} {'|vs 1 rank|':>11} | {'MB sent':>7} | "
              f"{'attn ours':>9} {'attn ds':>8} | {'a2a ours':>8} {'a2a ds':>7} (ms)")
        for length, heads, head_dim, diff, err, sent, mo, md, co, cd in rows:
            print(f"{length:>6} {heads:>5} {head_dim:>4} | {diff:>9.1e} {err:>11.1e} | {sent:>7.2f} | "
                  f"{mo:>9.1f} {md:>8.1f} | {co:>8.1f} {cd:>7.1f}")
        print(f"deepspeed {deepspeed.__version__}: {disk_mb('deepspeed'):.0f} MB on disk (+ its dependencies), "
              f"import of deepspeed.sequence.layer {import_s:.1f} s, init_distributed {init_s:.1f} s here; "
              f"ours: torch only")
        print("copies (read from both code paths): each all-to-all in both = one permute copy before and one "
              "after (dropped when the permute is a no-op, e.g. batch 1), plus a copy of a non-contiguous input; "
              "same layouts, no extra copy on either side")
        print("per-rank KV cache of H/P heads: ours stores k/v between the all-to-alls and the attention "
              "(UlyssesSequence.attend); deepspeed hands its local_attention (q, k, v, *args, **kwargs) at the same "
              "point, so a cache-storing callable would fit; deepspeed also splits a head count the ranks do not "
              "divide (uneven all-to-all), ours refuses it")
        print(f"token count not divisible by {ranks}: neither all-to-all takes uneven shards (deepspeed fed 5 + 4 "
              f"tokens aborts on gloo with a size mismatch, see --odd-length); ours pads the chunk to a multiple of "
              f"the Ulysses size before splitting it (UlyssesSequence._share), with deepspeed the caller would")
        worst = max(r[3] for r in rows)
        ratio = statistics.median(r[9] / r[8] for r in rows)
        speed = ("ours is faster" if ratio > 1.05 else "DeepSpeed is faster" if ratio < 0.95
                 else "the two are equal within noise")
        print(f"verdict: outputs agree to {worst:.1e}; DeepSpeed's all-to-alls take {ratio:.2f}x ours' time (median "
              f"over sizes) on CPU gloo, same bytes moved: {speed} here; GPU/NCCL still unmeasured")
    if args.odd_length:
        sys.stdout.flush()
        odd_length(ds, rank)
    dist.destroy_process_group()
    return 0


def ds_comm(ds, q, k, v):
    """DeepSpeed's 4 all-to-alls of one forward without the attention between them."""
    from deepspeed.sequence.layer import _SeqAllToAll

    q, k, v = (_SeqAllToAll.apply(ds.spg, t, ds.scatter_idx, ds.gather_idx, 0) for t in (q, k, v))
    return _SeqAllToAll.apply(ds.spg, q, ds.gather_idx, ds.scatter_idx, 0)


if __name__ == "__main__":
    sys.exit(main())

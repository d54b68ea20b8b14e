"""torchrun worker: Ulysses attention and the Ulysses+FSDP2 DiT (float32, bf16) against one rank; writes rank-N.json."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from inference.distributed.context import ParallelContext
from inference.distributed.options import ParallelOptions
from inference.distributed.ulysses import ulysses_attention
from inference.models.attention import attention
from inference.models.config import DiTConfig
from inference.models.dit import FLOAT32_MODULES, CausalDiT

LAT_H, LAT_W, CHUNK = 2, 6, 3  # 1 x 3 tokens per frame, 9 per chunk: not a multiple of 2 ranks (padding path)


def gathered(x: torch.Tensor, ctx: ParallelContext, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(parts, x.contiguous(), group=ctx.ulysses_group)
    return torch.cat(parts, dim=dim)


def attention_error(ctx: ParallelContext) -> dict[str, float]:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 10, 4, 8) for _ in range(3))  # (B, L, heads, head_dim), same on every rank
    share = [t.chunk(ctx.world_size, dim=1)[ctx.rank] for t in (q, k, v)]
    out = gathered(ulysses_attention(*share, ctx.ulysses_group, ctx.ulysses_size), ctx, dim=1)
    single = attention(q, k, v)
    return {"attention": float((out - single).abs().max()), "attention_scale": float(single.abs().max())}


def indivisible_heads_message(ctx: ParallelContext) -> str:
    q = torch.zeros(1, 4, 3, 8)  # 3 heads over 2 ranks
    try:
        ulysses_attention(q, q, q, ctx.ulysses_group, ctx.ulysses_size)
    except ValueError as exc:
        return str(exc)
    return ""


def chunk(seed: int, batch: int):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, channels, CHUNK, LAT_H, LAT_W, generator=g) for channels in (16, 20, 384))


@torch.no_grad()
def dit_errors(ctx: ParallelContext, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Two slots at different frame offsets, three chunks of (2 steps + clean update, keys-only on the group), one
    rank vs the group.

    In bfloat16 the time embedding, time projection and head stay float32, so FSDP2 shards mixed dtypes.
    """
    torch.manual_seed(0)
    # inference weights, as load_dit_checkpoint gives them (FSDP2 accepts mixed dtypes only without grads)
    single = CausalDiT(DiTConfig.tiny(text_dim=32)).eval().to(dtype).keep_islands_float32().requires_grad_(False)
    group = ParallelOptions(ulysses_size=ctx.world_size, dit_fsdp=True).apply_dit(copy.deepcopy(single), ctx)
    caches = [m.new_cache(capacity=3, frame_seqlen=(LAT_H // 2) * (LAT_W // 2), kv_frames=12) for m in (single, group)]
    for model, cache in zip((single, group), caches):
        for slot in (0, 2):
            model.set_prompt(cache, slot, torch.randn(5 + slot, 32, generator=torch.Generator().manual_seed(slot)))
    errors = {"flow": 0.0, "flow_scale": 0.0}
    for c in range(3):
        x, y, control = chunk(c, batch=2)
        starts = [c * CHUNK, (c + 1) * CHUNK]  # slot 2 runs one chunk ahead of slot 0
        for t in (999.0, 500.0, 0.0):
            # the clean update: the group's is keys-only, as the pipeline runs it (its last block stores its
            # keys through the sharded weights and the all-to-all, and stops); the caches are compared below
            out = [m(x, y, torch.tensor([t, t]), control, cache, start_frames=starts, slots=[2, 0],
                     keys_only=t == 0.0 and m is group) for m, cache in zip((single, group), caches)]
            if out[1] is None:
                errors["keys_only_updates"] = errors.get("keys_only_updates", 0) + 1
                continue
            errors["flow"] = max(errors["flow"], float((out[0] - out[1]).abs().max()))
            errors["flow_scale"] = max(errors["flow_scale"], float(out[0].abs().max()))
    kv_single, kv_group = caches[0].self_kv, caches[1].self_kv
    errors["cache_k"] = float((group.sequence.full_heads(kv_group.k, dim=3) - kv_single.k).abs().max())
    errors["cache_v"] = float((group.sequence.full_heads(kv_group.v, dim=3) - kv_single.v).abs().max())
    errors["cache_k_scale"] = float(kv_single.k.abs().max())
    errors["cache_v_scale"] = float(kv_single.v.abs().max())
    errors["local_heads"] = kv_group.k.shape[3]
    errors["islands_float32"] = all(p.dtype == torch.float32 for name in FLOAT32_MODULES
                                    for p in getattr(group, name).parameters())
    return errors


def main(out_dir: str) -> int:
    ctx = ParallelContext.from_env(timeout_s=60)
    result = {"world_size": ctx.world_size, **attention_error(ctx),
              "indivisible_heads": indivisible_heads_message(ctx), **dit_errors(ctx),
              "bf16": dit_errors(ctx, torch.bfloat16)}
    Path(out_dir, f"rank-{ctx.rank}.json").write_text(json.dumps(result))
    ctx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

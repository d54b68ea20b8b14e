"""One torchrun rank of bench/gpu_check.py's 2-rank stage: the fixture's DiT calls with Ulysses + FSDP2 on its device.

    torchrun --standalone --nproc_per_node=2 -m bench.gpu_rank_check FIXTURE_DIR OUT.json

Every rank replays the stored calls (NCCL between GPUs, gloo on CPU); rank 0
writes the worst errors against the float32 tolerances to OUT.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from inference.conformance import Fixture
from inference.conformance.dit import RolloutFile, call, new_session
from inference.distributed.context import ParallelContext
from inference.distributed.options import ParallelOptions
from inference.models.checkpoint import load_dit_checkpoint

TOL = 1e-4  # atol = rtol, as the one-process replay


def worst(a: torch.Tensor, b: torch.Tensor) -> tuple[float, bool]:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    diff = (a - b).abs()
    return float(diff.max()), bool((diff <= TOL + TOL * b.abs()).all())


def main(fixture_dir: str, out: str) -> int:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ctx = ParallelContext.from_env(ulysses_size=2, timeout_s=300.0)
    fixture = Fixture(fixture_dir)
    model = load_dit_checkpoint(fixture.path("transformer"), device=ctx.device, dtype=torch.float32)
    ParallelOptions(ulysses_size=2, dit_fsdp=True).apply_dit(model, ctx)
    roll = RolloutFile(fixture)
    roll.t = {k: v.to(ctx.device) for k, v in roll.t.items()}
    cache, flow_err, kv_err, ok = new_session(model, roll), 0.0, 0.0, True
    with torch.no_grad():
        for c in range(roll.num_chunks):
            for s in range(roll.num_steps):
                flow = call(model, cache, roll, c, roll[f"chunk{c}/step{s}/x"], roll[f"chunk{c}/step{s}/t"])
                err, good = worst(flow, roll[f"chunk{c}/step{s}/noise_pred"])
                flow_err, ok = max(flow_err, err), ok and good
            call(model, cache, roll, c, roll[f"chunk{c}/update/x"], roll[f"chunk{c}/update/t"])
            for name, store in (("k", cache.self_kv.k), ("v", cache.self_kv.v)):
                held = model.sequence.full_heads(store[:, 0], dim=2)  # (layers, kv_tokens, heads, head_dim)
                stored = torch.stack([roll[f"chunk{c}/kv_after_update/layer{layer}/{name}"][0]
                                      for layer in range(model.config.num_layers)])
                err, good = worst(held, stored)
                kv_err, ok = max(kv_err, err), ok and good
    if ctx.is_leader:
        backend = f"{torch.distributed.get_backend()} on {ctx.device.type}"
        Path(out).write_text(json.dumps({"backend": backend, "calls": roll.num_chunks * roll.num_steps,
                                         "flow_abs_max": flow_err, "kv_abs_max": kv_err, "ok": ok}))
    ctx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))

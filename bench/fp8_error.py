"""What `--weights fp8` costs in accuracy and saves in bytes, measured on CPU.

    python bench/fp8_error.py [--fixture ../shared/fixtures/lingbot_fast_tiny] [--chunks 4]

1. Weight bytes: the A14B-fast DiT from its config (memory plan), and the
   tiny fixture model as loaded (bf16 vs fp8).
2. The shared fixture: every stored DiT call replayed with its stored inputs
   by a bf16 and an fp8 model; relative L2 error of the flow prediction
   against the fixture's float32 reference and fp8 against bf16.
3. A free-running rollout of `--chunks` chunks through the real engine
   (tiny random checkpoint, bf16 vs fp8, same seed and a walking camera):
   per chunk, the relative error of the flow predictions and the PSNR of
   the decoded frames of fp8 against bf16.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.conformance import Fixture  # noqa: E402
from inference.conformance.dit import RolloutFile, call, new_session  # noqa: E402
from inference.engine.base import ChunkWork, SessionSpec  # noqa: E402
from inference.lingbot.engine import LingbotFastEngine  # noqa: E402
from inference.models.checkpoint import load_dit_checkpoint  # noqa: E402
from inference.models.fp8 import quantize_blocks, weight_bytes  # noqa: E402
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402
from inference.tools.memory_plan import GIB, Deployment, MemoryPlan  # noqa: E402

# the shared cam set: $FIXTURES_DIR/lingbot_fast_tiny, else ../shared/fixtures beside the repo (as the tests look)
FIXTURE = Path(os.environ.get("FIXTURES_DIR") or Path(__file__).resolve().parents[2] / "shared" / "fixtures") \
    / "lingbot_fast_tiny"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@torch.no_grad()
def fixture_flows(model, run: RolloutFile) -> list[torch.Tensor]:
    """The model's flow for every stored call (stored inputs; the cache holds its own earlier writes)."""
    cache, flows = new_session(model, run), []
    for c in range(run.num_chunks):
        for s in range(run.num_steps):
            flows.append(call(model, cache, run, c, run[f"chunk{c}/step{s}/x"], run[f"chunk{c}/step{s}/t"]).float())
        call(model, cache, run, c, run[f"chunk{c}/update/x"], run[f"chunk{c}/update/t"])
    return flows


def fixture_report(fixture: Path) -> None:
    run = RolloutFile(Fixture(fixture))
    want = [run[f"chunk{c}/step{s}/noise_pred"] for c in range(run.num_chunks) for s in range(run.num_steps)]
    models = {}
    for name in ("bf16", "fp8"):
        models[name] = load_dit_checkpoint(fixture / "transformer", device="cpu", dtype=torch.bfloat16)
        if name == "fp8":
            quantize_blocks(models[name], models[name].blocks)
    flows = {name: fixture_flows(m, run) for name, m in models.items()}
    print(f"fixture {fixture.name}: {len(want)} DiT calls; weights bf16 {weight_bytes(models['bf16'])} B, "
          f"fp8 {weight_bytes(models['fp8'])} B")
    for name in ("bf16", "fp8"):
        errors = [rel(f, w) for f, w in zip(flows[name], want)]
        print(f"  {name} vs float32 reference: flow rel. error mean {np.mean(errors):.4f}, max {max(errors):.4f}")
    errors = [rel(f, b) for f, b in zip(flows["fp8"], flows["bf16"])]
    print(f"  fp8 vs bf16: flow rel. error mean {np.mean(errors):.4f}, max {max(errors):.4f}")


def rollout(model_dir: Path, weights: str, chunks: int) -> tuple[list[list[torch.Tensor]], list[np.ndarray]]:
    """Flows (per chunk, per DiT call) and decoded frames of one walking session."""
    engine = LingbotFastEngine.from_model_dir(model_dir, dtype="bfloat16", weights=weights)
    flows: list[torch.Tensor] = []
    engine.models.dit.register_forward_hook(lambda module, args, out: flows.append(out.float().clone()))
    engine.open_session(SessionSpec(session_id="walk", prompt="green hills", seed=4, width=64, height=48))
    per_chunk, frames, done = [], [], 0
    for c in range(chunks):
        n = engine.sessions["walk"].expected_frames()
        poses = np.broadcast_to(np.eye(4), (n, 4, 4)).copy()
        poses[:, 2, 3] = 0.05 * (done + np.arange(n))  # walking forward
        keys = np.zeros((n, 8), np.float32)
        keys[:, 0] = 1.0
        flows.clear()
        frames.append(engine.generate([ChunkWork(session_id="walk", chunk_index=c, poses=poses, keys=keys)])[0].frames)
        per_chunk.append(list(flows))
        done += n
    return per_chunk, frames


def rollout_report(chunks: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_checkpoint(Path(tmp) / "tiny", seed=4)
        base, quant = rollout(model_dir, "bf16", chunks), rollout(model_dir, "fp8", chunks)
    print(f"{chunks}-chunk rollout (tiny random checkpoint, 64*48, bf16 activations), fp8 vs bf16:")
    for c in range(chunks):
        errors = [rel(q, b) for q, b in zip(quant[0][c], base[0][c])]
        print(f"  chunk {c}: flow rel. error mean {np.mean(errors):.4f} (max {max(errors):.4f}) over "
              f"{len(errors)} DiT calls; frames PSNR {psnr(quant[1][c], base[1][c]):.1f} dB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", type=Path, default=FIXTURE)
    ap.add_argument("--chunks", type=int, default=4)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    bf16 = MemoryPlan(Deployment()).weights()["DiT weights"]
    fp8 = MemoryPlan(Deployment(weights="fp8")).weights()["DiT weights"]
    print(f"A14B-fast DiT weights: bf16 {bf16 / GIB:.2f} GiB, fp8 {fp8 / GIB:.2f} GiB ({fp8 / bf16:.3f}x)")
    if args.fixture.is_dir():
        fixture_report(args.fixture)
    else:
        print(f"fixture {args.fixture} not found: fixture replay skipped")
    rollout_report(args.chunks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

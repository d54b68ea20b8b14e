"""Per-chunk time and peak memory of each rank of a lingbot-fast engine group (run it with 1 and with N ranks).

    python -m torch.distributed.run --standalone --nproc_per_node=2 bench/engine_group.py [--chunks 8]
    python bench/engine_group.py [--chunks 8]

Without --model-dir a tiny random checkpoint is written to a temporary
folder. Rank 0 runs the chunks through the engine group exactly as the
engine process does (every call broadcast, other ranks replay it); each rank
reports its peak RSS (getrusage maxrss). One run's numbers; a shared CPU is
noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.distributed.context import ParallelContext  # noqa: E402
from inference.distributed.options import ParallelOptions  # noqa: E402
from inference.engine.base import ChunkWork, SessionSpec  # noqa: E402
from inference.engine.group import LeaderEngine, follow, rank_status  # noqa: E402
from inference.lingbot.engine import LingbotFastEngine  # noqa: E402
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402


def build(model_dir: Path, ctx: ParallelContext, layout: ParallelOptions) -> LingbotFastEngine:
    def prepare(models) -> None:
        layout.apply_dit(models.dit, ctx)
        layout.apply_t5(models.text.model, ctx)

    return LingbotFastEngine.from_model_dir(model_dir, device=ctx.device, prepare=prepare if ctx.distributed else None)


def chunk_times(engine, chunks: int, width: int, height: int) -> list[float]:
    """Wall ms of each `generate` of one idle session (first chunk included)."""
    engine.open_session(SessionSpec(session_id="bench", prompt="green hills", seed=1, width=width, height=height))
    info = engine.info()
    times = []
    for c in range(chunks):
        frames = info.first_chunk_frames if c == 0 else info.chunk_frames
        work = ChunkWork(session_id="bench", chunk_index=c, poses=np.broadcast_to(np.eye(4), (frames, 4, 4)).copy(),
                         keys=np.zeros((frames, 8), np.float32))
        start = time.perf_counter()
        engine.generate([work])
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-dir", default="")
    ap.add_argument("--size", default="48*32")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--no-fsdp", action="store_true", help="Ulysses only")
    args = ap.parse_args()
    ctx = ParallelContext.from_env(timeout_s=120)
    layout = ParallelOptions(ulysses_size=ctx.world_size, dit_fsdp=not args.no_fsdp, t5_fsdp=not args.no_fsdp)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else Path(tmp) / f"tiny-rank{ctx.rank}"
        if not args.model_dir:
            make_tiny_checkpoint(model_dir, seed=2, sizes=(args.size,))
        engine = build(model_dir, ctx, layout)
        engine.warm_up()
        if ctx.is_leader:
            leader = LeaderEngine(engine, ctx) if ctx.distributed else engine
            width, height = (int(v) for v in args.size.split("*"))
            times = chunk_times(leader, args.chunks, width, height)
            if ctx.distributed:
                leader.tick()  # gathers every rank's peak RSS
                statuses = leader.statuses
                leader.close()
            else:
                statuses = [rank_status(ctx)]
            steady = times[1:] or times
            kind = "single" if not ctx.distributed else "Ulysses" if args.no_fsdp else "Ulysses+FSDP2"
            print(f"ranks {ctx.world_size} ({kind}), size {args.size}, {args.chunks} chunks")
            print(f"first chunk {times[0]:.1f} ms; later chunks median {statistics.median(steady):.1f} ms "
                  f"(min {min(steady):.1f}, max {max(steady):.1f})")
            for s in statuses:
                print(f"rank {s.rank}: peak RSS {s.peak_rss_mb:.0f} MB")
        else:
            follow(engine, ctx)
    ctx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

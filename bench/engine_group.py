"""Per-chunk time and peak memory of each rank of a lingbot-fast engine group (run it with 1 and with N ranks).

    python -m torch.distributed.run --standalone --nproc_per_node=2 bench/engine_group.py [--chunks 8]
    python bench/engine_group.py [--chunks 8]

Without --model-dir a tiny random checkpoint is written to a temporary
folder. Rank 0 runs the chunks through the engine group exactly as the
engine process does (every call broadcast, other ranks replay it); each rank
reports the wall time of its `generate` calls and its peak RSS (getrusage
maxrss). Only rank 0 decodes frames, as in the engine process;
--followers-decode makes every rank decode (the behaviour before followers
skipped it), for comparison. One run's numbers; a shared CPU is noisy.
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


def build(model_dir: Path, ctx: ParallelContext, layout: ParallelOptions, decode: bool) -> LingbotFastEngine:
    def prepare(models) -> None:
        layout.apply_dit(models.dit, ctx)
        layout.apply_t5(models.text.model, ctx)

    return LingbotFastEngine.from_model_dir(model_dir, device=ctx.device, prepare=prepare if ctx.distributed else None,
                                            decode=decode)


class TimedFollower:
    """A follower's engine whose `generate` calls are timed (wall ms); every other call passes through."""

    def __init__(self, engine: LingbotFastEngine):
        self.engine = engine
        self.times: list[float] = []

    def generate(self, works):
        start = time.perf_counter()
        out = self.engine.generate(works)
        self.times.append((time.perf_counter() - start) * 1000)
        return out

    def __getattr__(self, name):
        return getattr(self.engine, name)


def summary(times: list[float]) -> str:
    steady = times[1:] or times
    return (f"first chunk {times[0]:.1f} ms; later chunks median {statistics.median(steady):.1f} ms "
            f"(min {min(steady):.1f}, max {max(steady):.1f})")


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
    ap.add_argument("--followers-decode", action="store_true",
                    help="every rank runs the VAE decode (the old behaviour), not rank 0 alone")
    args = ap.parse_args()
    ctx = ParallelContext.from_env(timeout_s=120)
    layout = ParallelOptions(ulysses_size=ctx.world_size, dit_fsdp=not args.no_fsdp, t5_fsdp=not args.no_fsdp)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else Path(tmp) / f"tiny-rank{ctx.rank}"
        if not args.model_dir:
            make_tiny_checkpoint(model_dir, seed=2, sizes=(args.size,))
        engine = build(model_dir, ctx, layout, decode=ctx.is_leader or args.followers_decode)
        engine.warm_up()
        if ctx.is_leader:
            leader = LeaderEngine(engine, ctx) if ctx.distributed else engine
            width, height = (int(v) for v in args.size.split("*"))
            times = chunk_times(leader, args.chunks, width, height)
            if ctx.distributed:
                leader.tick()  # gathers every rank's peak RSS
                statuses = leader.statuses
                leader.close()
                rank_times = ctx.all_gather_object(times)
            else:
                statuses, rank_times = [rank_status(ctx)], [times]
            kind = "single" if not ctx.distributed else "Ulysses" if args.no_fsdp else "Ulysses+FSDP2"
            decoding = "every rank decodes" if args.followers_decode or not ctx.distributed else "rank 0 decodes"
            print(f"ranks {ctx.world_size} ({kind}, {decoding}), size {args.size}, {args.chunks} chunks")
            for s, t in zip(statuses, rank_times):
                print(f"rank {s.rank}: {summary(t)}; peak RSS {s.peak_rss_mb:.0f} MB")
        else:
            timed = TimedFollower(engine)
            follow(timed, ctx)
            ctx.all_gather_object(timed.times)
    ctx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

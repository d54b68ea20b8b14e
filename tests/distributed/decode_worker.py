"""torchrun worker: a lingbot-fast engine group where only rank 0 decodes, against every rank decoding and one rank.

Rank 0 drives three chunks of one session through LeaderEngine three times:
the group as the engine process builds it (followers skip the VAE decode),
the group with every rank decoding (the behaviour before), and a plain
one-rank engine. Rank 1 follows the two group runs and records what its
`generate` calls returned and whether its sessions hold decoder state.
Each rank writes rank-N.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from inference.distributed.context import ParallelContext
from inference.distributed.options import ParallelOptions
from inference.engine.__main__ import build_engine, parse_args
from inference.engine.base import ChunkWork, SessionSpec
from inference.engine.group import LeaderEngine, follow
from inference.lingbot.engine import LingbotFastEngine
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint

SIZE = "48*32"
CHUNKS = 3


class RecordingFollower:
    """A follower's engine that keeps what each `generate` returned (frame shapes, decode ms)."""

    def __init__(self, engine: LingbotFastEngine):
        self.engine = engine
        self.outputs: list[dict] = []

    def generate(self, works):
        out = self.engine.generate(works)
        self.outputs += [{"frames_shape": list(o.frames.shape), "decode_ms": o.decode_ms} for o in out]
        return out

    def __getattr__(self, name):
        return getattr(self.engine, name)


def stream(engine) -> list[np.ndarray]:
    """The frames of CHUNKS chunks of one fixed session (left open)."""
    width, height = (int(v) for v in SIZE.split("*"))
    engine.open_session(SessionSpec(session_id="s", prompt="a lake", seed=5, width=width, height=height))
    info = engine.info()
    frames = []
    for c in range(CHUNKS):
        n = info.first_chunk_frames if c == 0 else info.chunk_frames
        poses = np.broadcast_to(np.eye(4), (n, 4, 4)).copy()
        poses[:, 0, 3] = np.linspace(0, 0.1 * (c + 1), n)  # a little camera motion
        keys = np.zeros((n, 8), np.float32)
        frames.append(engine.generate([ChunkWork(session_id="s", chunk_index=c, poses=poses, keys=keys)])[0].frames)
    return frames


def run_group(engine, ctx: ParallelContext) -> dict:
    """Rank 0: the chunks' frames through the group; other ranks: what following produced."""
    engine.warm_up()
    if ctx.is_leader:
        leader = LeaderEngine(engine, ctx)
        frames = stream(leader)
        leader.close()
        return {"frames": frames}
    recorder = RecordingFollower(engine)
    follow(recorder, ctx)
    report = {"outputs": recorder.outputs, "decode": engine.decode,
              "sessions": len(engine.sessions),
              "decoders": [s.decoder is not None for s in engine.sessions.values()]}
    engine.close()
    return report


def main(out_dir: str) -> int:
    ctx = ParallelContext.from_env(timeout_s=120)
    model_dir = Path(out_dir) / f"tiny-rank{ctx.rank}"  # same seed: the same weights on every rank
    make_tiny_checkpoint(model_dir, seed=2, sizes=(SIZE,))
    args = parse_args(["--engine", "lingbot-fast", "--endpoint", "tcp://127.0.0.1:1", "--model-dir", str(model_dir),
                       "--dit-fsdp", "--t5-fsdp"])
    served = run_group(build_engine(args, ctx), ctx)  # as the engine process builds each rank's engine

    layout = ParallelOptions.from_args(args)

    def prepare(models) -> None:
        layout.apply_dit(models.dit, ctx)
        layout.apply_t5(models.text.model, ctx)

    every = run_group(LingbotFastEngine.from_model_dir(model_dir, device=ctx.device, prepare=prepare, decode=True),
                      ctx)
    if ctx.is_leader:
        single = stream(LingbotFastEngine.from_model_dir(model_dir, device=ctx.device))
        pairs = list(zip(served["frames"], every["frames"], single))
        result = {"shapes": [list(a.shape) for a, _, _ in pairs],
                  "same_as_every_rank_decoding": all(np.array_equal(a, b) for a, b, _ in pairs),
                  "max_diff_vs_single": max(int(np.abs(a.astype(int) - c.astype(int)).max()) for a, _, c in pairs),
                  "same_as_single": all(np.array_equal(a, c) for a, _, c in pairs)}
    else:
        result = {"served": served, "every": every}
    Path(out_dir, f"rank-{ctx.rank}.json").write_text(json.dumps(result))
    ctx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

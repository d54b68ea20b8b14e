"""torchrun worker: rank 0's first decode at a size outlasts the collective timeout; the group must survive it.

The control group's timeout is 8 s; rank 0's first VAE decode is made to take
16 s (as a first cuDNN call can). Rank 1 runs only the DiT part and would wait
for rank 0's next call past its timeout, were it not for the long barrier
after a size's first chunk. Rank 0 streams two chunks and a test frame; each
rank writes rank-N.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from inference.distributed.context import ParallelContext
from inference.engine.__main__ import build_engine, parse_args
from inference.engine.base import ChunkWork, SessionSpec
from inference.engine.group import LeaderEngine, follow
from inference.models.vae import StreamingDecoder
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint

COLLECTIVE_TIMEOUT_S = 8.0  # short, yet far above a steady tiny chunk on a loaded 2-core machine
SLOW_DECODE_S = 16.0


def slow_first_decode() -> None:
    """Rank 0's first decode sleeps SLOW_DECODE_S (a stand-in for cuDNN choosing kernels)."""
    decode, calls = StreamingDecoder.decode_chunk, []

    def decode_chunk(self, latents):
        if latents.device.type != "meta":  # the memory plan sizes caches with meta-device decodes
            if not calls:
                time.sleep(SLOW_DECODE_S)
            calls.append(1)
        return decode(self, latents)

    StreamingDecoder.decode_chunk = decode_chunk


def chunk(engine, index: int) -> np.ndarray:
    n = engine.engine.sessions["s"].expected_frames()
    work = ChunkWork(session_id="s", chunk_index=index, poses=np.broadcast_to(np.eye(4), (n, 4, 4)).copy(),
                     keys=np.zeros((n, 8), np.float32))
    return engine.generate([work])[0].frames


def main(out_dir: str) -> int:
    ctx = ParallelContext.from_env(timeout_s=COLLECTIVE_TIMEOUT_S)
    model_dir = Path(out_dir) / f"tiny-rank{ctx.rank}"
    make_tiny_checkpoint(model_dir, seed=2, sizes=("48*32",))
    args = parse_args(["--engine", "lingbot-fast", "--endpoint", "tcp://127.0.0.1:1", "--model-dir", str(model_dir),
                       "--collective-timeout-s", str(COLLECTIVE_TIMEOUT_S)])
    engine = build_engine(args, ctx)
    ctx.barrier(120.0)  # loading speeds differ
    if ctx.is_leader:
        slow_first_decode()
        leader = LeaderEngine(engine, ctx, first_chunk_timeout_s=args.first_chunk_timeout_s)
        leader.open_session(SessionSpec(session_id="s", prompt="a lake", seed=5, width=48, height=32))
        t0 = time.monotonic()
        frames = [len(chunk(leader, 0)), len(chunk(leader, 1))]
        result = {"frames": frames, "seconds": time.monotonic() - t0,
                  "test_frame": list(leader.render_test_frame("hills", 0, 48, 32).shape)}
        leader.close()
    else:
        follow(engine, ctx)
        result = {"followed": True}
    Path(out_dir, f"rank-{ctx.rank}.json").write_text(json.dumps(result))
    ctx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

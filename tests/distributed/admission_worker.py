"""torchrun worker: a 2-rank lingbot-fast group where only rank 1 is short of memory; the group refuses together.

Both ranks build their engine as the engine process does (Ulysses 2, FSDP2,
admission agreed over the control group). Rank 1's planned-memory limit
holds one 48*32 session but not two. Rank 0 opens one session, then tries a
second session and a test frame (both must be refused 'busy', naming rank 1),
closes the first and opens the second. Each rank writes rank-N.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from inference.distributed.context import ParallelContext
from inference.engine.__main__ import build_engine, parse_args
from inference.engine.base import EngineUserError, SessionSpec
from inference.engine.group import LeaderEngine, follow
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint

SIZE = (48, 32)


def spec(session_id: str) -> SessionSpec:
    return SessionSpec(session_id=session_id, prompt="a lake", seed=5, width=SIZE[0], height=SIZE[1])


def refusal(call) -> dict | None:
    try:
        call()
    except EngineUserError as exc:
        return {"code": exc.code, "message": str(exc)}
    return None


def main(out_dir: str) -> int:
    ctx = ParallelContext.from_env(timeout_s=120)
    model_dir = Path(out_dir) / f"tiny-rank{ctx.rank}"  # same seed: the same weights on every rank
    make_tiny_checkpoint(model_dir, seed=2, sizes=("48*32",))
    args = parse_args(["--engine", "lingbot-fast", "--endpoint", "tcp://127.0.0.1:1", "--model-dir", str(model_dir),
                       "--dit-fsdp", "--t5-fsdp"])
    engine = build_engine(args, ctx)
    if ctx.rank == 1:  # room for one session here, not two
        one, two = engine.memory.planned({SIZE: 1}), engine.memory.planned({SIZE: 2})
        engine.memory.limit_bytes = (one + two) // 2
    engine.warm_up()
    if ctx.is_leader:
        leader = LeaderEngine(engine, ctx)
        leader.open_session(spec("a"))
        result = {"second": refusal(lambda: leader.open_session(spec("b"))),
                  "test_frame": refusal(lambda: leader.render_test_frame("hills", 0, *SIZE))}
        leader.close_session("a")
        result["after_close"] = refusal(lambda: leader.open_session(spec("b")))
        result["sessions"] = sorted(engine.sessions)
        leader.close()
    else:
        follow(engine, ctx)
        result = {"sessions": sorted(engine.sessions)}
    Path(out_dir, f"rank-{ctx.rank}.json").write_text(json.dumps(result))
    ctx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

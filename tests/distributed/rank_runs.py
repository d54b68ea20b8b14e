"""Run a test worker module on N real torchrun ranks and collect each rank's JSON result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_ranks(module: str, out: Path, world: int, timeout: float) -> list[dict]:
    """`torchrun --nproc_per_node=world -m module out`; every rank writes out/rank-<r>.json."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", module, str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(world)]

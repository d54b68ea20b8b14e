"""Shared pieces of the conformance CLI tests: the fixture path, the CLI, the line format, a corrupted copy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "lingbot_fast_tiny"
LINE = re.compile(r"^(\S.*?) (\S+) atol=\S+,rtol=\S+ (PASS|FAIL)(  # .*)?$")


def run_cli(fixture: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m inference.conformance FIXTURE *extra` from the repo root."""
    return subprocess.run([sys.executable, "-m", "inference.conformance", str(fixture), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def corrupted_fixture(tmp_path: Path) -> Path:
    """A copy of the shared fixture whose first stored DiT output is perturbed by 1e-2."""
    copy = tmp_path / "fixture"
    shutil.copytree(FIXTURE, copy)
    rollout = copy / "rollout.safetensors"
    rollout.chmod(0o644)
    tensors = load_file(str(rollout))
    key = next(k for k in sorted(tensors) if k.endswith("noise_pred"))
    tensors[key] = tensors[key] + 1e-2
    save_file(tensors, str(rollout))
    return copy

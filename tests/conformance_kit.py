"""Shared pieces of the conformance CLI tests: the CLI, the line format, the expected groups, a corrupted copy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from tests.fixtures_kit import REPO

LINE = re.compile(r"^(\S.*?) (\S+) atol=\S+,rtol=\S+ (PASS|FAIL)(  # .*)?$")
GROUPS = {"camera", "t5", "vae", "dit"}


def run_cli(fixture: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m inference.conformance FIXTURE *extra` from the repo root."""
    return subprocess.run([sys.executable, "-m", "inference.conformance", str(fixture), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def passing_report(out: subprocess.CompletedProcess) -> list[str]:
    """Assert a whole report passed (exit 0, every line PASS, '<n> passed, 0 failed'); return the check names."""
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    checks = [LINE.match(line) for line in lines[:-1]]
    assert all(checks), [line for line, m in zip(lines, checks) if not m]
    assert all(m.group(3) == "PASS" for m in checks)
    assert re.fullmatch(r"(\d+) passed, 0 failed", lines[-1]) and int(lines[-1].split()[0]) == len(checks)
    return [m.group(1) for m in checks]


def corrupted_fixture(source: Path, tmp_path: Path) -> Path:
    """A copy of fixture set `source` whose first stored DiT output is perturbed by 1e-2."""
    copy = tmp_path / "fixture"
    shutil.copytree(source, copy)
    rollout = copy / "rollout.safetensors"
    rollout.chmod(0o644)
    tensors = load_file(str(rollout))
    key = next(k for k in sorted(tensors) if k.endswith("noise_pred"))
    tensors[key] = tensors[key] + 1e-2
    save_file(tensors, str(rollout))
    return copy

"""`python -m inference.conformance` on the shared fixture set: every check passes, and a corrupted set fails."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO.parent / "shared" / "fixtures" / "lingbot_fast_tiny"
LINE = re.compile(r"^(\S.*?) (\S+) atol=\S+,rtol=\S+ (PASS|FAIL)(  # .*)?$")


def run_cli(fixture: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inference.conformance", str(fixture), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_shared_fixture_passes_every_check():
    """Every check line says PASS, the summary says 0 failed, and the exit status is 0."""
    out = run_cli(FIXTURE)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    checks = [LINE.match(line) for line in lines[:-1]]
    assert all(checks), [line for line, m in zip(lines, checks) if not m]
    groups = {m.group(1).split("/")[0] for m in checks}
    assert groups == {"camera", "t5", "vae", "dit"}
    assert re.fullmatch(r"(\d+) passed, 0 failed", lines[-1]) and int(lines[-1].split()[0]) == len(checks) >= 40


def test_corrupted_fixture_fails(tmp_path):
    """A fixture whose stored DiT output is perturbed by 1e-2 makes the replay FAIL and exit 1."""
    copy = tmp_path / "fixture"
    shutil.copytree(FIXTURE, copy)
    rollout = copy / "rollout.safetensors"
    rollout.chmod(0o644)
    tensors = load_file(str(rollout))
    key = next(k for k in sorted(tensors) if k.endswith("noise_pred"))
    tensors[key] = tensors[key] + 1e-2
    save_file(tensors, str(rollout))
    out = run_cli(copy, "--only", "dit")
    assert out.returncode == 1
    assert any(line.endswith("FAIL") or " FAIL" in line for line in out.stdout.splitlines())
    assert re.search(r"\d+ passed, [1-9]\d* failed$", out.stdout.strip())

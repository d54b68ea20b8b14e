"""`python -m inference.conformance DIR --nproc 2`: the fixture replay on 2 torchrun ranks (Ulysses 2, FSDP2)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO.parent / "shared" / "fixtures" / "lingbot_fast_tiny"
LINE = re.compile(r"^(\S.*?) (\S+) atol=\S+,rtol=\S+ (PASS|FAIL)(  # .*)?$")


def run_cli(fixture: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inference.conformance", str(fixture), "--nproc", "2", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_rank_replay_passes_every_check_once():
    """Rank 0 alone prints one PASS line per check of every group, the summary says 0 failed, exit status 0."""
    out = run_cli(FIXTURE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    checks = [LINE.match(line) for line in lines[:-1]]
    assert all(checks), [line for line, m in zip(lines, checks) if not m]
    names = [m.group(1) for m in checks]
    assert len(names) == len(set(names)), "a check was printed by more than one rank"
    assert {name.split("/")[0] for name in names} == {"camera", "t5", "vae", "dit"}
    assert any(name.startswith("dit/replay/") and name.endswith("kv_after_update_k") for name in names)
    assert re.fullmatch(r"(\d+) passed, 0 failed", lines[-1]) and int(lines[-1].split()[0]) == len(checks) >= 40


@pytest.mark.slow
def test_two_rank_replay_of_a_corrupted_fixture_fails(tmp_path):
    """A stored DiT output perturbed by 1e-2 makes the 2-rank DiT replay print FAIL and exit 1."""
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
    assert any(line.endswith(" FAIL") or " FAIL  #" in line for line in out.stdout.splitlines())
    assert re.search(r"\d+ passed, [1-9]\d* failed$", out.stdout.strip())

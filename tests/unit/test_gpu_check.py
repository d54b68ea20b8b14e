"""bench/gpu_check.py, the one prepared GPU check: its dry run on the CPU passes every stage and writes the table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_kit import CAM, fixture_set

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["env", "conformance_fp32", "conformance_bf16", "attention", "dit_bf16", "dit_fp8", "dit_graphs", "vae",
          "memory_plan", "server", "nccl_2rank"]


def run_check(out: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    if "--fixture" not in args:
        args = ("--fixture", str(fixture_set(CAM)), *args)
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    reports = sorted(out.glob("gpu_check-*-dry.json"))
    assert len(reports) == 1, (done.stdout[-2000:], done.stderr[-3000:])
    return done, json.loads(reports[0].read_text())


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_dry_run_passes_every_stage_and_prints_one_table(tmp_path):
    """`--dry-run` runs all eleven stages on the CPU; each passes (two ranks are skipped on one device), one table
    lists them and the JSON holds each stage's figures."""
    done, report = run_check(tmp_path, "--iters", "1", timeout=1100)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    statuses = {s["stage"]: s["status"] for s in report["stages"]}
    assert list(statuses) == STAGES
    assert all(v == "PASS" for k, v in statuses.items() if k != "nccl_2rank") and statuses["nccl_2rank"] == "SKIP"
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["stage", "status", "seconds", "result"]
    assert all(any(line.startswith(stage) for line in lines) for stage in STAGES)
    figures = {s["stage"]: s["figures"] for s in report["stages"]}
    assert figures["conformance_fp32"]["calls_ok"] and figures["dit_bf16"]["ms_per_chunk"] > 0
    assert 0 < figures["memory_plan"]["dit_bf16_step"]["ratio"] <= 1.15
    assert figures["server"]["frames"] >= 21 and figures["server"]["rank0"]["attention"] == "direct"
    assert figures["dit_graphs"]["flow_and_keys_rel_max"] < 1e-5 and not figures["dit_graphs"]["graphs"]


def test_a_failing_stage_is_marked_and_the_run_goes_on(tmp_path):
    """With a missing fixture the conformance stage fails, the next stage still runs, and the exit status is 1."""
    done, report = run_check(tmp_path, "--fixture", str(tmp_path / "missing"), "--only", "conformance_fp32",
                             "--only", "attention", timeout=300)
    assert done.returncode == 1
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["conformance_fp32"]["status"] == "FAIL" and "missing" in stages["conformance_fp32"]["summary"]
    assert stages["attention"]["status"] == "PASS"
    assert "FAILED: conformance_fp32" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_rank_stage_replays_the_fixture_on_two_torchrun_ranks(tmp_path):
    """`--ranks 2` runs the 2-rank stage on real torchrun ranks (gloo on the CPU): float32 errors, PASS."""
    done, report = run_check(tmp_path, "--ranks", "2", "--only", "nccl_2rank", timeout=500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    stage = report["stages"][0]
    assert stage["status"] == "PASS" and stage["figures"]["backend"] == "gloo on cpu"
    assert stage["figures"]["calls"] == 12 and stage["figures"]["flow_abs_max"] < 1e-4

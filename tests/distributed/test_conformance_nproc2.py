"""`python -m inference.conformance DIR --nproc 2`: the fixture replay on 2 torchrun ranks (Ulysses 2, FSDP2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conformance_kit import GROUPS, corrupted_fixture, passing_report
from tests.conformance_kit import run_cli as run_one_process_cli


def run_cli(fixture: Path, *extra: str):
    return run_one_process_cli(fixture, "--nproc", "2", *extra, timeout=300)


@pytest.mark.slow
def test_two_rank_replay_passes_every_check_once(each_set):
    """Rank 0 alone prints one PASS line per check of every group, the summary says 0 failed, exit status 0."""
    names = passing_report(run_cli(each_set))
    assert len(names) == len(set(names)), "a check was printed by more than one rank"
    assert {name.split("/")[0] for name in names} == GROUPS and len(names) >= 40
    assert any(name.startswith("dit/replay/") and name.endswith("kv_after_update_k") for name in names)


@pytest.mark.slow
def test_two_rank_replay_of_a_corrupted_fixture_fails(cam_set, tmp_path):
    """A stored DiT output perturbed by 1e-2 makes the 2-rank DiT replay print FAIL and exit 1."""
    copy = corrupted_fixture(cam_set, tmp_path)
    out = run_cli(copy, "--only", "dit")
    assert out.returncode == 1
    assert any(line.endswith(" FAIL") or " FAIL  #" in line for line in out.stdout.splitlines())
    assert re.search(r"\d+ passed, [1-9]\d* failed$", out.stdout.strip())

"""`python -m inference.conformance` on each shared fixture set: every check passes, and a corrupted set fails."""

from __future__ import annotations

import re

from inference.conformance import Fixture
from tests.conformance_kit import GROUPS, corrupted_fixture, passing_report, run_cli


def test_each_fixture_set_passes_every_check(each_set):
    """Every check line of every group says PASS in the set's control type, and the exit status is 0."""
    names = passing_report(run_cli(each_set))
    assert {name.split("/")[0] for name in names} == GROUPS and len(names) >= 40
    assert "dit/rollout/x0_latents_from_keys" in names
    assert ("camera/wasd_action_sub" in names) == (Fixture(each_set).control_type == "act")


def test_corrupted_fixture_fails(cam_set, tmp_path):
    """A fixture whose stored DiT output is perturbed by 1e-2 makes the replay FAIL and exit 1."""
    copy = corrupted_fixture(cam_set, tmp_path)
    out = run_cli(copy, "--only", "dit")
    assert out.returncode == 1
    assert any(line.endswith(" FAIL") or " FAIL  #" in line for line in out.stdout.splitlines())
    assert re.search(r"\d+ passed, [1-9]\d* failed$", out.stdout.strip())

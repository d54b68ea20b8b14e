"""`python -m inference.conformance` on the shared fixture set: every check passes, and a corrupted set fails."""

from __future__ import annotations

import re

from tests.conformance_kit import FIXTURE, LINE, corrupted_fixture, run_cli


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
    copy = corrupted_fixture(tmp_path)
    out = run_cli(copy, "--only", "dit")
    assert out.returncode == 1
    assert any(line.endswith("FAIL") or " FAIL" in line for line in out.stdout.splitlines())
    assert re.search(r"\d+ passed, [1-9]\d* failed$", out.stdout.strip())

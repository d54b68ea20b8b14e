"""The one rule for tests that need a shared golden fixture set: find it, or skip saying which set and how to get it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES_ENV = "FIXTURES_DIR"
CAM = "lingbot_fast_tiny"
"""control_type cam, global attention, 9 latent frames."""
ACT = "lingbot_fast_tiny_act"
"""control_type act, window 6 + sink 1, 12 latent frames (eviction)."""
SETS = (CAM, ACT)


def fixtures_root() -> Path:
    """$FIXTURES_DIR when set, else ../shared/fixtures beside the repo (where CI lays it)."""
    override = os.environ.get(FIXTURES_ENV)
    return Path(override) if override else REPO.parent / "shared" / "fixtures"


def fixture_set(name: str) -> Path:
    """The folder of set `name`; skips the calling test (or fixture) when the set is not there."""
    path = fixtures_root() / name
    if not (path / "fixture_meta.json").is_file():
        pytest.skip(f"fixture set {name!r} not found at {path}: put the shared folder beside the repo "
                    f"(../shared/fixtures/{name}, as CI lays it) or set {FIXTURES_ENV} to a folder that holds it")
    return path

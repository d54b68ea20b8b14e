"""Shared fixture sets as pytest fixtures: `cam_set`, `act_set`, `each_set` (both); absent sets skip (fixtures_kit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures_kit import ACT, CAM, SETS, fixture_set


@pytest.fixture(scope="session")
def cam_set() -> Path:
    return fixture_set(CAM)


@pytest.fixture(scope="session")
def act_set() -> Path:
    return fixture_set(ACT)


@pytest.fixture(scope="session", params=SETS)
def each_set(request) -> Path:
    return fixture_set(request.param)

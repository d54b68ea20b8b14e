"""Fixtures for upsampler tests: the fake OpenAI server as the upsampler child."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from upsampler_helpers import FakeChild  # noqa: E402


@pytest.fixture
def fake_child(tmp_path: Path) -> FakeChild:
    return FakeChild(tmp_path)

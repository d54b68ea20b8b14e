"""The dit conformance group against the shared golden fixture."""

from pathlib import Path

import pytest

from inference.conformance import Fixture
from inference.conformance import dit as dit_conformance

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "lingbot_fast_tiny"


@pytest.mark.slow
def test_every_dit_check_passes_on_the_shared_fixture():
    """Replaying every stored DiT call and the free-running rollout stays within the fixture tolerances."""
    checks = list(dit_conformance.run(Fixture(FIXTURE)))
    failed = [f"{c.name}: {c.max_abs_err:.3e} ({c.note})" for c in checks if not c.passed]
    assert not failed, failed
    names = {c.name for c in checks}
    assert "dit/rollout/x0_latents" in names and "dit/replay/chunk2/kv_after_update_k" in names
    assert len(checks) == 28

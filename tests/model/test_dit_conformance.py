"""The dit conformance group against the shared golden fixture."""

from pathlib import Path

import pytest
import torch

from inference.conformance import Fixture
from inference.conformance import dit as dit_conformance
from inference.models.checkpoint import load_dit_checkpoint

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


def test_bfloat16_weights_stay_close_to_the_float32_reference():
    """A bf16 copy of the fixture DiT predicts the first stored flow within bf16 rounding (2e-2)."""
    model = load_dit_checkpoint(FIXTURE / "transformer", dtype=torch.bfloat16)
    run = dit_conformance.RolloutFile(Fixture(FIXTURE))
    with torch.no_grad():
        cache = dit_conformance.new_session(model, run)
        flow = dit_conformance.call(model, cache, run, 0, run["chunk0/step0/x"], run["chunk0/step0/t"])
    assert flow.dtype == torch.float32 and cache.self_kv.k.dtype == torch.bfloat16
    torch.testing.assert_close(flow, run["chunk0/step0/noise_pred"], atol=2e-2, rtol=2e-2)

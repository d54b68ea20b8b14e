"""The 4-step flow-matching sampler against the fixture's scheduler tensors."""

import pytest
import torch
from safetensors.torch import load_file

from inference.models.sampler import FlowMatchSampler, flow_schedule


@pytest.fixture(scope="module")
def stored(each_set) -> dict[str, torch.Tensor]:
    return load_file(str(each_set / "rollout.safetensors"))


def test_schedule_equals_the_reference_tables_bit_for_bit(stored):
    """Our 1000-step shift-5 schedule reproduces the stored timesteps (int64) and sigmas (float32) exactly."""
    timesteps, sigmas = flow_schedule(1000, 5.0)
    assert timesteps.dtype == torch.int64 and sigmas.dtype == torch.float32
    assert torch.equal(timesteps, stored["scheduler/timesteps_all"])
    assert torch.equal(sigmas, stored["scheduler/sigmas_all"])
    assert FlowMatchSampler().timesteps.tolist() == [999, 957, 899, 702]


def test_duplicate_timesteps_take_first_match_for_x0_and_second_for_renoise():
    """x0 uses sigma indices [0, 179, 357, 679]; re-noising uses [180, 358, 679], as distilled."""
    sampler = FlowMatchSampler()
    assert sampler.x0_sigma_index == [0, 179, 357, 679]
    assert sampler.renoise_sigma_index == [180, 358, 679]


def test_x0_and_renoise_reproduce_a_stored_step(stored):
    """Stored x, noise_pred and noise give the stored x0 and x_next of chunk 1, step 1."""
    sampler = FlowMatchSampler()
    key = "chunk1/step1"
    x0 = sampler.to_x0(1, stored[f"{key}/x"], stored[f"{key}/noise_pred"])
    torch.testing.assert_close(x0, stored[f"{key}/x0"], atol=0, rtol=0)
    x_next = sampler.renoise(2, x0, stored[f"{key}/add_noise_noise"])
    torch.testing.assert_close(x_next, stored[f"{key}/x_next"], atol=0, rtol=0)


def test_renoise_draws_fresh_noise_from_the_session_generator():
    """Two generators with one seed give identical re-noised latents; consecutive draws differ."""
    sampler = FlowMatchSampler()
    x0 = torch.zeros(16, 3, 4, 6)
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first = sampler.renoise_from(1, x0, a)
    assert torch.equal(first, sampler.renoise_from(1, x0, b))
    assert not torch.equal(first, sampler.renoise_from(1, x0, a))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, sampler.renoise_sigmas[0] * noise)

"""The 4-step flow-matching sampler LingBot-World-Fast was distilled with (schedule, x0, re-noising)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
SHIFT = 5.0
STEP_INDICES = (0, 179, 358, 679)


def flow_schedule(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, shift: float = SHIFT
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow UniPC schedule after set_timesteps(num_train_timesteps, shift).

    Returns (timesteps (N,) int64, sigmas (N+1,) float32 ending in 0). The
    timesteps are truncated to integers, so neighbouring ones can repeat.
    """
    n = num_train_timesteps
    # Training sigmas 1 - linspace(1, 1/n, n)[::-1], stored in float32; their ends bound the inference grid.
    train_sigmas = (1.0 - np.linspace(1, 1 / n, n)[::-1]).astype(np.float32)
    sigma_max, sigma_min = float(train_sigmas[0]), float(train_sigmas[-1])
    sigmas = np.linspace(sigma_max, sigma_min, n + 1)[:-1]  # float64
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = torch.from_numpy(sigmas * n).to(torch.int64)  # truncation, the distilled checkpoint's quirk
    sigmas_all = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    return timesteps, sigmas_all


class FlowMatchSampler:
    """Few-step sampler: x0 = x_t - sigma_t * flow, then re-noise to the next timestep with fresh noise.

    The x0 conversion takes the sigma of the first schedule entry equal to the
    timestep, the re-noising the second one when the timestep repeats (as the
    reference's argmin and `index_for_timestep` do); reproduced on purpose.
    """

    def __init__(self, *, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, shift: float = SHIFT,
                 step_indices: Sequence[int] = STEP_INDICES):
        self.timesteps_all, self.sigmas_all = flow_schedule(num_train_timesteps, shift)
        self.step_indices = tuple(int(i) for i in step_indices)
        self.timesteps = self.timesteps_all[list(self.step_indices)]  # (steps,) int64
        all_t = self.timesteps_all.tolist()
        self.x0_sigma_index = [all_t.index(t) for t in self.timesteps.tolist()]
        self.renoise_sigma_index = [self._second_match(all_t, t) for t in self.timesteps.tolist()[1:]]
        # Host floats: the hot path needs no device reads.
        self.x0_sigmas = [float(self.sigmas_all[i]) for i in self.x0_sigma_index]
        self.renoise_sigmas = [float(self.sigmas_all[i]) for i in self.renoise_sigma_index]

    @staticmethod
    def _second_match(all_t: list[int], t: int) -> int:
        matches = [i for i, value in enumerate(all_t) if value == t]
        return matches[1] if len(matches) > 1 else matches[0]

    @property
    def num_steps(self) -> int:
        return len(self.step_indices)

    def timestep(self, step: int, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The DiT timestep input (batch,) int64 for denoising step `step`."""
        return torch.full((batch,), self.timestep_value(step), dtype=torch.int64, device=device)

    def timestep_value(self, step: int) -> int:
        """Denoising step `step`'s timestep, a host int."""
        return int(self.timesteps[step])

    def to_x0(self, step: int, x_t: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Clean-latent estimate x_t - sigma_t * flow, computed in float64, returned in x_t's dtype."""
        sigma = self.x0_sigmas[step]
        return (x_t.double() - sigma * flow.double()).to(x_t.dtype)

    def renoise(self, step: int, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Input of denoising step `step` (>= 1): (1 - sigma) * x0 + sigma * noise, in x0's dtype."""
        if not 1 <= step < self.num_steps:
            raise ValueError(f"renoise step {step}: expected 1..{self.num_steps - 1}")
        sigma = torch.tensor(self.renoise_sigmas[step - 1], dtype=torch.float32).to(x0.dtype)
        return (1 - sigma) * x0 + sigma * noise.to(x0.dtype)

    def renoise_from(self, step: int, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """renoise() with fresh noise torch.randn(x0.shape) drawn from the session's generator."""
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.renoise(step, x0, noise)

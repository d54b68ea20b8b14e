"""One chunk for a batch of sessions: condition, 4-step DiT denoising + t=0 cache update, streaming VAE decode."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from inference.lingbot.session import SessionStream
from inference.models.dit import CausalDiT, ChunkCamera, TimeConditions
from inference.models.dit_step import make_step, step_mode
from inference.models.kv_cache import DiTCache
from inference.models.sampler import FlowMatchSampler
from inference.models.vae import video_to_uint8

LATENT_CHANNELS = 16


@dataclass(kw_only=True)
class ChunkRequest:
    """One session's part of a batched chunk."""

    session: SessionStream
    poses: np.ndarray  # (F, 4, 4)
    keys: np.ndarray  # (F, 8)


@dataclass(kw_only=True)
class ChunkResult:
    frames: np.ndarray  # (F, H, W, 3) uint8; (0, H, W, 3) when the pipeline does not decode
    dit_ms: float
    """The batch's DiT time (4 steps + cache update), shared by its sessions."""
    condition_ms: float
    """VAE encode of the condition y (0 once it reached its steady state), the batch's mean."""
    decode_ms: float
    """This session's streaming VAE decode + uint8 conversion."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ChunkPipeline:
    """Runs the shared DiT over a batch of same-signature sessions and decodes each one's frames.

    With decode=False (engine-group followers, whose frames nobody sees)
    everything that feeds the DiT still runs (condition, sampler, cache
    update) but the VAE decode is skipped and each result has no frames.
    compile / cuda_graphs run the DiT's device work compiled and/or replayed
    from CUDA graphs (inference/models/dit_step.py).
    """

    def __init__(self, dit: CausalDiT, *, sampler: FlowMatchSampler | None = None, decode: bool = True,
                 compile: bool | str = False, cuda_graphs: bool = False):
        self.dit = dit
        self.decode = decode
        self.sampler = sampler or FlowMatchSampler()
        self.device = dit.patch_embedding.weight.device
        self.step = make_step(dit, compile=compile, cuda_graphs=cuda_graphs)
        self.times = TimeConditions(dit)
        self.static = self.step is not None  # compiled or graphed: the cache plan those steps need
        self.step_mode = step_mode(compile=compile, cuda_graphs=cuda_graphs)

    @torch.no_grad()
    def run(self, cache: DiTCache, requests: list[ChunkRequest]) -> list[ChunkResult]:
        """Advance every session by one chunk (its camera, condition, KV slot and decoder move on)."""
        t0 = time.perf_counter()
        ys = [r.session.condition.next_chunk() for r in requests]  # (1, 20, n, h, w) each
        sync(self.device)
        t1 = time.perf_counter()
        controls = [r.session.control(r.poses, r.keys, self.device) for r in requests]  # (1, C, n, h, w) each
        latents = self.denoise(cache, requests, torch.cat(ys), torch.cat(controls))  # (B, 16, n, h, w)
        sync(self.device)
        t2 = time.perf_counter()
        condition_ms = (t1 - t0) * 1000 / len(requests)
        results = []
        for b, r in enumerate(requests):
            t3 = time.perf_counter()
            if self.decode:
                video = r.session.decoder.decode_chunk(latents[b:b + 1])  # (1, 3, T, H, W)
                frames = video_to_uint8(video)[0].cpu().numpy()  # (T, H, W, 3)
            else:
                frames = np.zeros((0, r.session.height, r.session.width, 3), dtype=np.uint8)
            decode_ms = (time.perf_counter() - t3) * 1000
            r.session.latent_frames += latents.shape[2]
            r.session.chunks += 1
            results.append(ChunkResult(frames=frames, dit_ms=(t2 - t1) * 1000, condition_ms=condition_ms,
                                       decode_ms=decode_ms))
        return results

    def denoise(self, cache: DiTCache, requests: list[ChunkRequest], y: torch.Tensor,
                control: torch.Tensor) -> torch.Tensor:
        """Sampler steps + the t=0 update for the batch; returns the clean latents (B, 16, n, h, w) float32."""
        sessions = [r.session for r in requests]
        batch, _, n, h, w = y.shape
        slots = [s.slot for s in sessions]
        starts = [s.latent_frames for s in sessions]
        shape = (1, LATENT_CHANNELS, n, h, w)
        # every session draws from its own generator, so batching does not change anyone's noise
        x = torch.cat([s.noise(shape, self.device) for s in sessions])  # (B, 16, n, h, w)
        # one camera embedding for the 5 calls; the CPU also keeps every block's camera modulation
        camera = ChunkCamera(control, reuse=self.device.type == "cpu")
        steps = self.sampler.num_steps
        for step in range(steps):
            t = self.times.get(self.sampler.timestep_value(step), batch)  # (B, 7, dim): computed once per value
            flow = self.dit(x, y, t, camera, cache, starts, slots, step=self.step, static=self.static)
            x0 = self.sampler.to_x0(step, x, flow.float())
            if step + 1 < steps:
                noise = torch.cat([s.noise(shape, self.device) for s in sessions])
                x = self.sampler.renoise(step + 1, x0, noise)
        clean = self.times.get(0, batch)
        self.dit(x0, y, clean, camera, cache, starts, slots, step=self.step, static=self.static,
                 keys_only=True)  # the clean chunk's keys: the last block stops once they are stored
        return x0

"""Conformance of the Wan2.1 VAE (one-shot and streaming encode/decode) against the fixture's vae/ goldens."""

from __future__ import annotations

from typing import Iterator

import torch

from inference.conformance import Check, Fixture, compare
from inference.models.vae import StreamingDecoder, StreamingEncoder, VAEConfig, load_vae

# README "Tolerances": VAE decodes at atol 1e-3 + rtol 1e-3.
ATOL = 1e-3
RTOL = 1e-3


def run(fixture: Fixture) -> Iterator[Check]:
    config = VAEConfig.from_json(fixture.path("vae/vae_config.json"))
    vae = load_vae(fixture.path("vae/vae.pth"), "cpu", torch.float32, config=config)
    g = fixture.tensors("vae/goldens.safetensors")

    video = g["encode/video"][None]  # (1, 3, T, H, W)
    yield compare("vae/encode/latent", vae.encode(video)[0], g["encode/latent"], atol=ATOL, rtol=RTOL)
    yield compare("vae/encode/latent_streamed", _encode_in_chunks(vae, video)[0], g["encode/latent"],
                  atol=ATOL, rtol=RTOL, note="first frame + 4 frames per chunk through one StreamingEncoder")

    raw = vae.decode(g["encode/latent"][None])[0]
    yield compare("vae/decode/video_raw", raw, g["decode/video_raw"], atol=ATOL, rtol=RTOL)
    yield compare("vae/decode/video", raw.clamp(-1, 1), g["decode/video"], atol=ATOL, rtol=RTOL)

    latent = g["stream/latent"][None]
    sizes = [int(s) for s in g["stream/chunk_sizes"]]
    for per_call in (1, max(sizes)):
        decoder = StreamingDecoder(vae, latent_frames_per_call=per_call)
        for c, chunk in enumerate(latent.split(sizes, dim=2)):
            suffix = "" if per_call == 1 else f" (latent_frames_per_call={per_call})"
            yield compare(f"vae/stream/chunk{c}/video_raw{suffix}", decoder.decode_chunk(chunk)[0],
                          g[f"stream/chunk{c}/video_raw"], atol=ATOL, rtol=RTOL)


def _encode_in_chunks(vae, video: torch.Tensor) -> torch.Tensor:
    encoder = StreamingEncoder(vae)
    chunks = [video[:, :, :1]] + list(video[:, :, 1:].split(4, dim=2))
    return torch.cat([encoder.encode_chunk(c) for c in chunks], dim=2)

"""Wan2.1 video VAE: config, model, per-session streaming encode/decode, loading, uint8 frames."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from inference.models.vae_layers import CausalCache, CausalConv3d
from inference.models.vae_nets import Decoder3d, Encoder3d
from inference.models.weights import assign_state_dict, read_state_dict

# Per-channel statistics of Wan2.1 latents: normalised latent = (mu - mean) / std.
WAN21_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# Video frames per latent frame after the first one (temporal stride).
TIME_STRIDE = 4
# Pixels per latent cell along height and width.
SPACE_STRIDE = 8


@dataclass(kw_only=True)
class VAEConfig:
    """Shape of a Wan2.1 VAE and its latent normalisation."""

    dim: int = 96
    """Base channel width (real checkpoint: 96)."""
    z_dim: int = 16
    """Latent channels."""
    dim_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    """Channel multiplier per resolution stage."""
    num_res_blocks: int = 2
    """Residual blocks per encoder stage (the decoder uses one more)."""
    attn_scales: list[float] = field(default_factory=list)
    """Resolutions (1.0 = full) that get an attention block after each residual block."""
    temporal_downsample: list[bool] = field(default_factory=lambda: [False, True, True])
    """Which encoder stage transitions also halve time (the decoder mirrors it)."""
    dropout: float = 0.0
    """Dropout inside residual blocks (inactive at inference)."""
    latent_mean: tuple[float, ...] = WAN21_LATENT_MEAN
    """Per-channel latent mean subtracted after encoding."""
    latent_std: tuple[float, ...] = WAN21_LATENT_STD
    """Per-channel latent std divided out after encoding."""

    def __post_init__(self) -> None:
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            raise ValueError(f"latent_mean/latent_std have {len(self.latent_mean)}/{len(self.latent_std)} "
                             f"values, expected z_dim={self.z_dim} each")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temporal_downsample {self.temporal_downsample} needs "
                             f"{len(self.dim_mult) - 1} entries for dim_mult {self.dim_mult}")

    @classmethod
    def wan21(cls) -> "VAEConfig":
        """The released Wan2.1 VAE (Wan2.1_VAE.pth)."""
        return cls()

    @classmethod
    def from_json(cls, path: str | Path) -> "VAEConfig":
        """A fixture's vae_config.json: {"WanVAE_kwargs": {...}, "mean": [...], "std": [...]}."""
        raw = json.loads(Path(path).read_text())
        kw = dict(raw["WanVAE_kwargs"])
        if "temperal_downsample" in kw:  # the reference's spelling
            kw["temporal_downsample"] = kw.pop("temperal_downsample")
        return cls(**kw, latent_mean=tuple(raw.get("mean", WAN21_LATENT_MEAN)),
                   latent_std=tuple(raw.get("std", WAN21_LATENT_STD)))


class WanVAE(nn.Module):
    """Wan2.1 VAE. Inputs/outputs are (B, C, T, H, W); video in [-1, 1], latents normalised."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        common = dict(dim=config.dim, dim_mult=config.dim_mult, num_res_blocks=config.num_res_blocks,
                      attn_scales=config.attn_scales, dropout=config.dropout)
        # the encoder predicts mean and log-variance; only the mean is used
        self.encoder = Encoder3d(out_dim=config.z_dim * 2, temporal_downsample=config.temporal_downsample,
                                 **common)
        self.conv1 = CausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(z_dim=config.z_dim, temporal_upsample=config.temporal_downsample[::-1],
                                 **common)
        self._stats: dict = {}  # (device, dtype) -> (mean, 1/std) as (1, z, 1, 1, 1)

    def latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std) shaped (1, z_dim, 1, 1, 1) on like's device/dtype."""
        key = (like.device, like.dtype)
        if key not in self._stats:
            shape = (1, self.config.z_dim, 1, 1, 1)
            mean = torch.tensor(self.config.latent_mean, dtype=like.dtype).view(shape)
            inv_std = (1.0 / torch.tensor(self.config.latent_std, dtype=like.dtype)).view(shape)
            self._stats[key] = (mean.to(like.device), inv_std.to(like.device))
        return self._stats[key]

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, 1+4k, H, W) in [-1, 1] -> normalised latent (B, z, 1+k, H/8, W/8)."""
        return StreamingEncoder(self).encode_chunk(video)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent (B, z, f, h, w) -> raw (unclamped) video (B, 3, 1+4(f-1), 8h, 8w)."""
        return StreamingDecoder(self).decode_chunk(latent)


def _param_dtype(vae: WanVAE) -> torch.dtype:
    return vae.conv1.weight.dtype


class StreamingEncoder:
    """One video's encoder session: feed frames chunk by chunk, get the same latents as one shot.

    The first chunk holds 1 + 4k frames (the first frame is encoded alone, as
    in the reference), later chunks 4k frames; each group of 4 frames gives
    one latent frame.
    """

    def __init__(self, vae: WanVAE):
        self.vae = vae
        self.cache = CausalCache()
        self.frames_seen = 0

    def reset(self) -> None:
        """Start a new video."""
        self.cache.clear()
        self.frames_seen = 0

    @torch.no_grad()
    def encode_chunk(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> normalised latent (B, z, T', H/8, W/8)."""
        t = video.shape[2]
        lead = 1 if self.frames_seen == 0 else 0
        if video.ndim != 5 or video.shape[1] != 3 or (t - lead) % TIME_STRIDE or t < 1:
            need = "1 + 4k frames (first chunk)" if lead else "4k frames (after the first chunk)"
            raise ValueError(f"encode_chunk got video of shape {tuple(video.shape)}, expected "
                             f"(B, 3, T, H, W) with T = {need}")
        x = video.to(_param_dtype(self.vae))
        groups = ([x[:, :, :1]] if lead else []) + list(x[:, :, lead:].split(TIME_STRIDE, dim=2))
        out = torch.cat([self.vae.encoder(g, self.cache) for g in groups if g.shape[2]], dim=2)  # (B, 2z, T', h, w)
        self.frames_seen += t
        mu = self.vae.conv1(out)[:, : self.vae.config.z_dim]
        mean, inv_std = self.vae.latent_stats(mu)
        return (mu - mean) * inv_std


class StreamingDecoder:
    """One video's decoder session holding the causal feature cache across chunks.

    The session's first latent frame yields 1 video frame, every later one 4.
    Decoding chunk by chunk equals decoding all latents at once.
    `latent_frames_per_call` > 1 pushes several latent frames through the
    network together (same result, fewer larger kernels, more memory).
    """

    def __init__(self, vae: WanVAE, *, latent_frames_per_call: int = 1):
        if latent_frames_per_call < 1:
            raise ValueError(f"latent_frames_per_call must be >= 1, got {latent_frames_per_call}")
        self.vae = vae
        self.latent_frames_per_call = latent_frames_per_call
        self.cache = CausalCache()
        self.latent_frames_seen = 0

    def reset(self) -> None:
        """Start a new video (drops the cached frames)."""
        self.cache.clear()
        self.latent_frames_seen = 0

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, z, f, h, w) -> raw video (B, 3, T', 8h, 8w), not clamped."""
        if latents.ndim != 5 or latents.shape[1] != self.vae.config.z_dim or latents.shape[2] < 1:
            raise ValueError(f"decode_chunk got latents of shape {tuple(latents.shape)}, expected "
                             f"(B, {self.vae.config.z_dim}, f>=1, h, w)")
        z = latents.to(_param_dtype(self.vae))
        mean, inv_std = self.vae.latent_stats(z)
        x = self.vae.conv2(z / inv_std + mean)
        # the very first latent frame must pass alone (temporal upsampling skips it)
        lead = 1 if self.latent_frames_seen == 0 else 0
        groups = ([x[:, :, :1]] if lead else []) + list(x[:, :, lead:].split(self.latent_frames_per_call, dim=2))
        video = torch.cat([self.vae.decoder(g, self.cache) for g in groups if g.shape[2]], dim=2)
        self.latent_frames_seen += latents.shape[2]
        return video

    @staticmethod
    def video_frames_for(latent_frames: int, *, first_chunk: bool) -> int:
        """How many video frames a chunk of latent frames decodes to."""
        return TIME_STRIDE * latent_frames - (TIME_STRIDE - 1 if first_chunk else 0)


def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Decoded video (3, T, H, W) or (B, 3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3) / (B, T, H, W, 3).

    Clamps to [-1, 1] and rounds (x + 1) * 127.5 to the nearest integer on the
    video's device; only the uint8 result needs to cross to the host.
    """
    if video.ndim not in (4, 5) or video.shape[-4] != 3:
        raise ValueError(f"video_to_uint8 got shape {tuple(video.shape)}, expected (3, T, H, W) or (B, 3, T, H, W)")
    pixels = ((video.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)
    return pixels.movedim(-4, -1).contiguous()  # channels last: (..., T, H, W, 3)


def load_vae(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             *, config: VAEConfig | None = None, model_dir: str | Path | None = None) -> WanVAE:
    """Build the VAE on the meta device and strictly load a `.pth` state dict (e.g. Wan2.1_VAE.pth)."""
    config = config or VAEConfig.wan21()
    state = read_state_dict(path, what="VAE", model_dir=model_dir)
    with torch.device("meta"):
        vae = WanVAE(config)
    return assign_state_dict(vae, state, device=device, dtype=dtype, source=path)

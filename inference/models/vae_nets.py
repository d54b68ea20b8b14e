"""The Wan2.1 VAE's causal 3-D encoder and decoder networks (module names = checkpoint keys)."""

from __future__ import annotations

import torch
from torch import nn

from inference.models.vae_layers import AttentionBlock, CausalCache, CausalConv3d, Resample, ResidualBlock, RMSNorm


def _head(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(in_dim, gamma_dims=3), nn.SiLU(),
                         CausalConv3d(in_dim, out_dim, 3, time_pad=2, space_pad=1))


def _middle(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim),
                         ResidualBlock(dim, dim, dropout))


def _run_head(head: nn.Sequential, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    for layer in head:
        x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
    return x


class Encoder3d(nn.Module):
    """Video (B, 3, T, H, W) -> (B, out_dim, T', H/8, W/8), causal in time.

    The first frame of a session must come alone; later calls carry multiples
    of 4 frames (each group of 4 becomes one latent frame).
    """

    def __init__(self, *, dim: int, out_dim: int, dim_mult: list[int], num_res_blocks: int,
                 attn_scales: list[float], temporal_downsample: list[bool], dropout: float):
        super().__init__()
        dims = [dim * m for m in [1] + list(dim_mult)]
        scale = 1.0  # current resolution relative to the input, for attn_scales
        self.conv1 = CausalConv3d(3, dims[0], 3, time_pad=2, space_pad=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, stage_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, stage_dim, dropout))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(stage_dim))
                in_dim = stage_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(stage_dim, "downsample3d" if temporal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*blocks)
        self.middle = _middle(dims[-1], dropout)
        self.head = _head(dims[-1], out_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        cache.begin()
        x = self.conv1(x, cache)
        for layer in self.downsamples:
            x = layer(x, cache)
        for layer in self.middle:
            x = layer(x, cache)
        return _run_head(self.head, x, cache)


class Decoder3d(nn.Module):
    """Latent (B, z_dim, t, h, w) -> video (B, 3, T, 8h, 8w), causal in time.

    The session's first latent frame gives 1 video frame, every later one 4.
    """

    def __init__(self, *, dim: int, z_dim: int, dim_mult: list[int], num_res_blocks: int,
                 attn_scales: list[float], temporal_upsample: list[bool], dropout: float):
        super().__init__()
        dims = [dim * m for m in [dim_mult[-1]] + list(dim_mult)[::-1]]
        scale = 1.0 / 2 ** (len(dim_mult) - 2)  # current resolution relative to the output
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, time_pad=2, space_pad=1)
        self.middle = _middle(dims[0], dropout)
        blocks: list[nn.Module] = []
        for i, (in_dim, stage_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the previous Resample's conv halved the channels
            for _ in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, stage_dim, dropout))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(stage_dim))
                in_dim = stage_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(stage_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(dims[-1], 3)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        cache.begin()
        x = self.conv1(x, cache)
        for layer in self.middle:
            x = layer(x, cache)
        for layer in self.upsamples:
            x = layer(x, cache)
        return _run_head(self.head, x, cache)

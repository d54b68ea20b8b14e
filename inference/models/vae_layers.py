"""Layers of the Wan2.1 video VAE that run causally in time with a per-session frame cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Frames of its own input each 3-tap causal conv keeps for the next call.
CACHE_T = 2


class _FirstCall:
    """Marker a temporal resampler leaves in its slot after passing the session's first frame."""


FIRST_CALL_DONE = _FirstCall()


class CausalCache:
    """Per-session memory of the last input frames of every causal time conv.

    Each call of the encoder/decoder visits the convs in the same order, so a
    slot is addressed by visit order: `begin()` rewinds the cursor, every conv
    `read()`s its slot and then `write()`s its new content, which advances.
    """

    def __init__(self) -> None:
        self.slots: list = []
        self.cursor = 0

    def begin(self) -> None:
        """Start a new pass over the network."""
        self.cursor = 0

    def read(self):
        """The current slot's content (None on the session's first pass)."""
        if self.cursor == len(self.slots):
            self.slots.append(None)
        return self.slots[self.cursor]

    def write(self, value) -> None:
        """Replace the current slot's content and move to the next slot."""
        self.slots[self.cursor] = value
        self.cursor += 1

    def clear(self) -> None:
        """Forget everything: the next pass is the first frame of a new video."""
        self.slots = []
        self.cursor = 0


def cache_tail(past: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The last CACHE_T frames of past ++ x (a copy, so the full activation can be freed)."""
    if x.shape[2] >= CACHE_T or past is None:
        return x[:, :, -CACHE_T:].clone()
    return torch.cat([past, x], dim=2)[:, :, -CACHE_T:]


class CausalConv3d(nn.Conv3d):
    """3-D conv, zero-padded in space as usual but only on the past side in time.

    The past is the cached frames of the previous call when there are any,
    zeros before the first frame of the session.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int | tuple[int, int, int], *,
                 stride: int | tuple[int, int, int] = 1, time_pad: int = 0, space_pad: int = 0):
        super().__init__(in_dim, out_dim, kernel, stride=stride, padding=(0, space_pad, space_pad))
        self.time_pad = time_pad  # frames of left context the time kernel needs

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.time_pad == 0:
            return super().forward(x)
        if cache is None:
            raise ValueError(f"{type(self).__name__} with time_pad={self.time_pad} needs a CausalCache")
        past = cache.read()
        cache.write(cache_tail(past, x))
        return self.forward_with_past(x, past)

    def forward_with_past(self, x: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        """Convolve x given explicit past frames (None = start of the video)."""
        ctx = x if past is None else torch.cat([past, x], dim=2)
        missing = self.time_pad - (0 if past is None else past.shape[2])
        if missing > 0:
            ctx = F.pad(ctx, (0, 0, 0, 0, missing, 0))  # zeros before the first frame
        return super().forward(ctx)


class RMSNorm(nn.Module):
    """L2-normalise over channels (dim 1) and rescale by sqrt(C) * gamma."""

    def __init__(self, dim: int, *, gamma_dims: int):
        super().__init__()
        self.scale = dim ** 0.5
        # gamma is stored as (C, 1, 1[, 1]): 3 trailing ones for video norms, 2 for image norms
        self.gamma = nn.Parameter(torch.ones((dim,) + (1,) * gamma_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma.view((-1,) + (1,) * (x.ndim - 2))  # (C, 1, ..) matching x after dim 1
        return F.normalize(x, dim=1) * self.scale * gamma


class ResidualBlock(nn.Module):
    """norm-SiLU-conv-norm-SiLU-conv plus a (1x1 conv) shortcut; both convs causal 3x3x3."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        # index layout (0 norm, 2 conv, 3 norm, 6 conv) is the checkpoint's key layout
        self.residual = nn.Sequential(
            RMSNorm(in_dim, gamma_dims=3), nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, time_pad=2, space_pad=1),
            RMSNorm(out_dim, gamma_dims=3), nn.SiLU(), nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, time_pad=2, space_pad=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame separately (no time mixing)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, gamma_dims=2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        # cache is unused (no time mixing); accepted so the nets can call every block alike
        b, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)  # (B*T, HW, C)
        qkv = F.linear(tokens, self.to_qkv.weight.view(3 * c, c), self.to_qkv.bias)  # (B*T, HW, 3C)
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # each (B*T, 1, HW, C): one head
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (B*T, HW, C)
        out = F.linear(out, self.proj.weight.view(c, c), self.proj.bias)
        out = out.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
        return x + out


class Resample(nn.Module):
    """2x spatial up/down-sampling per frame, optionally with 2x temporal up/down-sampling.

    Temporal resampling leaves the session's first frame alone: a video of
    1 + 4k frames maps to 1 + k latent frames and back.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode {mode!r} is not one of {self.MODES}")
        self.mode = mode
        if mode.startswith("upsample"):
            # index 0 holds no weights and only fixes the key index of the conv (resample.1);
            # _spatial applies the same resize/pad directly on 5-D tensors
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)),
                                          nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            # produces two output frames per input frame, stacked on channels
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), time_pad=2)
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache)
        x = self._spatial(x)
        if self.mode == "downsample3d":
            x = self._halve_frames(x, cache)
        return x

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.resample[1]
        weight = conv.weight.unsqueeze(2)  # (O, I, 1, 3, 3): the 2-D kernel applied per frame
        if self.mode.startswith("upsample"):
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest-exact")
            return F.conv3d(x, weight, conv.bias, padding=(0, 1, 1))
        x = F.pad(x, (0, 1, 0, 1))  # right/bottom only, as ZeroPad2d((0, 1, 0, 1))
        return F.conv3d(x, weight, conv.bias, stride=(1, 2, 2))

    def _double_frames(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        state = cache.read()
        if state is None:  # the session's first frame is not upsampled in time
            cache.write(FIRST_CALL_DONE)
            return x
        past = None if state is FIRST_CALL_DONE else state
        cache.write(cache_tail(past, x))
        y = self.time_conv.forward_with_past(x, past)  # (B, 2C, T, H, W)
        b, c2, t, h, w = y.shape
        y = y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5)  # (B, C, T, 2, H, W)
        return y.reshape(b, c2 // 2, 2 * t, h, w)  # frame 2i from the first half of channels

    def _halve_frames(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        past = cache.read()
        cache.write(x[:, :, -1:].clone())
        if past is None:  # the session's first frame passes through alone
            return x
        if x.shape[2] % 2:
            raise ValueError(f"temporal downsampling needs an even frame count after the first "
                             f"frame, got {x.shape[2]}")
        # stride-2 taps over (previous last frame, f0, f1), (f1, f2, f3), ...
        return self.time_conv(torch.cat([past, x], dim=2))

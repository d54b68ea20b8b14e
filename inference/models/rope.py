"""3-D rotary position embedding (frame, row, column) with per-session frame offsets.

RoPE attention depends only on position differences: rotating a query at
frame p and a key at frame p' gives q.k rotated by (p - p'), so moving every
position by the same amount leaves attention unchanged (to float32 rounding).
The window cache relies on that to keep a stream's frame positions inside the
table forever (kv_cache.py, "re-anchoring"); `frame_rotation` supplies the
rotation that moves stored keys to a new frame of reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from inference.models.config import ROPE_POSITIONS

ROPE_THETA = 10000.0


class PositionLimitReached(RuntimeError):
    """A chunk would need a RoPE frame position past the table (the session must end or re-anchor)."""

    def __init__(self, *, end_frame: int, limit: int):
        super().__init__(
            f"latent frame positions up to {end_frame - 1} requested, but the RoPE table ends at {limit - 1}: "
            f"end or re-anchor the session before it reaches {limit} latent frames")
        self.end_frame = end_frame
        self.limit = limit


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of head_dim spent on (frame, height, width): d - 4*(d//6), 2*(d//6), 2*(d//6)."""
    third = head_dim // 6
    return head_dim - 4 * third, 2 * third, 2 * third


def inverse_frequencies(dim: int) -> torch.Tensor:
    """(dim/2,) float64: theta^(-2i/dim), the angle per position of each channel pair of one axis."""
    return 1.0 / torch.pow(ROPE_THETA, torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def axis_angles(positions: int, dim: int) -> torch.Tensor:
    """Rotation angles (positions, dim/2) in float64: p * theta^(-2i/dim)."""
    return torch.outer(torch.arange(positions, dtype=torch.float64), inverse_frequencies(dim))


class RotaryTables(nn.Module):
    """Precomputed cos/sin tables of the three axes; builds per-token rotations for a chunk grid.

    `frame_positions` is how many latent frame positions a stream may use
    (the reference's 1024; a setting so tests can reach the end quickly).
    Rows and columns always have the reference's ROPE_POSITIONS.
    """

    def __init__(self, head_dim: int, frame_positions: int = ROPE_POSITIONS):
        super().__init__()
        self.head_dim = head_dim
        self.split = tuple(d // 2 for d in axis_dims(head_dim))  # complex pairs per axis
        self.frame_positions = check_frame_positions(frame_positions)
        self.register_buffer("cos", torch.empty(self.rows, head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(self.rows, head_dim // 2), persistent=False)
        self.rebuild(self.cos.device)

    @property
    def rows(self) -> int:
        """Table length: enough for the frame positions and the reference's row/column positions."""
        return max(self.frame_positions, ROPE_POSITIONS)

    def set_frame_positions(self, frame_positions: int) -> None:
        """Change the frame table length (before any cache is made; caches copy it)."""
        self.frame_positions = check_frame_positions(frame_positions)
        if self.cos.shape[0] != self.rows:
            device = self.cos.device
            self.cos = torch.empty(self.rows, self.head_dim // 2, device=device)
            self.sin = torch.empty(self.rows, self.head_dim // 2, device=device)
            self.rebuild(device)

    def rebuild(self, device: torch.device | str) -> None:
        """(Re)compute the float32 tables on `device` (after meta init, moves or dtype casts)."""
        if torch.device(device).type == "meta":
            return
        angles = torch.cat([axis_angles(self.rows, d) for d in axis_dims(self.head_dim)], dim=1)
        self.cos = angles.cos().float().to(device)  # (rows, head_dim/2)
        self.sin = angles.sin().float().to(device)

    def _apply(self, fn, recurse=True):
        # Keep the tables float32 and exact whatever dtype the weights are cast to.
        super()._apply(fn, recurse)
        self.rebuild(self.cos.device)
        return self

    def check_grid(self, grid: tuple[int, int, int]) -> None:
        """Refuse a latent grid with more rows or columns than the tables hold."""
        _, h, w = grid
        if h > ROPE_POSITIONS or w > ROPE_POSITIONS:
            raise ValueError(f"latent grid {grid} has more than {ROPE_POSITIONS} rows or columns of patches; "
                             f"the RoPE tables hold {ROPE_POSITIONS}")

    def for_grid(self, grid: tuple[int, int, int], start_frames: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (B, L, 1, head_dim/2) for a (F, h, w) token grid starting at each item's frame."""
        self.check_grid(grid)
        end = max(start_frames) + grid[0]
        if end > self.frame_positions:
            raise PositionLimitReached(end_frame=end, limit=self.frame_positions)
        if min(start_frames) < 0:
            raise ValueError(f"start_frames {list(start_frames)} must be >= 0")
        return self._gather(self.cos, grid, start_frames), self._gather(self.sin, grid, start_frames)

    def _gather(self, table: torch.Tensor, grid: tuple[int, int, int], start_frames: Sequence[int]) -> torch.Tensor:
        f, h, w = grid
        batch = len(start_frames)
        t_frame, t_row, t_col = table.split(self.split, dim=1)
        if all(s == start_frames[0] for s in start_frames):
            frame = t_frame[start_frames[0]:start_frames[0] + f].unsqueeze(0).expand(batch, -1, -1)
        else:
            index = host_index(start_frames, table.device)[:, None] + torch.arange(f, device=table.device)
            frame = t_frame[index]  # (B, F, cf)
        parts = [
            frame.view(batch, f, 1, 1, -1).expand(batch, f, h, w, -1),
            t_row[:h].view(1, 1, h, 1, -1).expand(batch, f, h, w, -1),
            t_col[:w].view(1, 1, 1, w, -1).expand(batch, f, h, w, -1),
        ]
        return torch.cat(parts, dim=-1).reshape(batch, f * h * w, 1, -1)  # (B, L, 1, head_dim/2)


def check_frame_positions(frame_positions: int) -> int:
    if int(frame_positions) < 1:
        raise ValueError(f"frame_positions {frame_positions}: the RoPE frame table needs at least one position")
    return int(frame_positions)


def frame_rotation(head_dim: int, frames: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (frame_pairs,) float32 that move a rotated key by `frames` frame positions (any integer).

    Angles are frames * theta^(-2i/d) in float64 over the frame axis only
    (the first frame_pairs channel pairs); rows and columns do not move.
    """
    angles = frames * inverse_frequencies(axis_dims(head_dim)[0])  # (frame_pairs,)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def rotate_frame_axis_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate in place the frame-axis channel pairs of x (..., head_dim) by cos/sin (frame_pairs,) in float32."""
    frame_channels = 2 * cos.shape[0]
    part = x[..., :frame_channels]  # (..., 2 * frame_pairs): the frame axis comes first in head_dim
    part.copy_(apply_rotary(part, cos, sin))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2i, 2i+1) of x (B, L, heads, head_dim) in float32."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, L, heads, head_dim/2, 2)
    real, imag = pairs.unbind(-1)
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)  # (B, L, heads, head_dim)


def host_index(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """A long tensor of host ints on `device`, copied from pinned memory without a stream sync."""
    tensor = torch.tensor(list(values), dtype=torch.long)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)

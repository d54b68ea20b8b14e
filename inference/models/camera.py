"""LingBot camera condition: camera-to-world poses -> relative poses -> Plücker rays folded to latent cells.

Whole clip (`clip_camera_condition`) reproduces the reference `generate()`
camera path: intrinsics given for 832x480 scaled to (h, w); L latent poses
sampled at `linspace(0, frame_num - 1, L)` (linear translation, slerp
rotation, cast to float32); relative to the first, then framewise; the
translations divided by their max norm when it is positive; per pixel
(centres at +0.5) the ray `normalize([(u-cx)/fx, (v-cy)/fy, 1]) @ R^T` and
origin t; every 8x8 pixel block folded into channels, channel index
`c*64 + c1*8 + c2` (c the component, (c1, c2) the pixel inside the block):
`cam` -> (1, 6*64, L, h/8, w/8) with components (origin xyz, direction xyz);
`act` -> (1, 7*64, L, h/8, w/8) with components (direction xyz, W, A, S, D),
where latent k takes the W/A/S/D row `4k` of the per-video-frame action
array (the reference's `wasd_action[::4]`) broadcast over its pixels.

Streaming (`StreamingCamera`, one per session). A session's first chunk
has 1 + 4(n-1) video frames and later chunks 4n (n latents per chunk);
latent k sits at video frame 4k, the last frame of the 4 the causal VAE
folds into it (first chunk: local frames 0, 4, 8; later chunks: 3, 7, 11).
Its relative pose is `inv(P[4(k-1)]) @ P[4k]` (identity for k = 0): the
previous chunk's last latent pose is carried. Translations are divided by
`max(min_translation_scale, m)`, m the largest framewise translation norm
over the current chunk and the `scale_window_latents` latents before it,
so standing still never divides by zero and a brief tap is not blown up to
full speed (a 0.1-frame W tap gives 0.005 / 0.1 = 0.05, not 1).

Exact guarantee. The reference samples latent k at video time
k*(N-1)/(L-1); that is 4k (the streaming sample) iff N = 4(L-1) + 1 with
L a multiple of the chunk length, e.g. N = 33 or the reference default 81.
For such clips of poses from `CameraRig`, every streamed latent's rotation
equals the reference's (float32 tolerance), and so does its translation
whenever the reference's clip-wide max norm equals the streaming divisor.
That holds for constant-speed motion (the same key state from the start:
W, W+D, yaw, W+yaw, W+pitch, ...: every latent moves the same distance,
and every full-key motion moves >= 0.199 per latent, above the default
0.1 floor), however many chunks the clip has. For other lengths (N = 37
keeps L = 9 latents 4.5 frames apart) the reference turns 4.5 frames'
worth of yaw/pitch per latent where streaming turns 4 (and slerps
between frames); only pure translation at constant speed (normalised to
unit length either way) stays equal there. The `act` W/A/S/D state of a streamed latent is the
`keys` row at its own frame (the keys that produced that pose); the
reference's row 4k is one frame ahead, which a stream cannot see for the
last latent of a chunk.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

REFERENCE_HEIGHT, REFERENCE_WIDTH = 480, 832  # the frame size intrinsics are given for
# fx, fy, cx, cy of the reference example camera at 832x480 (fixture `intrinsics_480x832`).
EXAMPLE_INTRINSICS = (502.9115905761719, 503.1081237792969, 415.7778625488281, 239.7777862548828)
FRAMES_PER_LATENT = 4  # VAE temporal stride
PIXELS_PER_LATENT = 8  # VAE spatial stride: one latent cell folds an 8x8 pixel block
CONTROL_CHANNELS = {"cam": 6, "act": 7}


def scale_intrinsics(intrinsics, height: int, width: int) -> np.ndarray:
    """(..., 4) fx, fy, cx, cy given for 832x480 -> float32 for a (height, width) frame."""
    k = np.asarray(intrinsics, dtype=np.float32)
    if k.shape[-1] != 4:
        raise ValueError(f"intrinsics shape {k.shape}: expected (..., 4) as fx, fy, cx, cy")
    # Same arithmetic as the reference: float32 values times float32 scale factors (no crop).
    scale = np.array([width / REFERENCE_WIDTH, height / REFERENCE_HEIGHT] * 2, dtype=np.float32)
    return k * scale


def usable_frame_count(num_poses: int, frame_num: int) -> int:
    """Video frames the reference keeps: both counts rounded down to 4n+1, the smaller one."""
    if num_poses < 1 or frame_num < 1:
        raise ValueError(f"need at least one pose and one frame, got {num_poses} poses, frame_num {frame_num}")
    return min(((frame_num - 1) // 4) * 4 + 1, ((num_poses - 1) // 4) * 4 + 1)


def latent_sample_times(frame_num: int, chunk_size: int) -> np.ndarray:
    """(L,) float64 video-frame times of the latent poses: the reference's `tgt_indices`."""
    latents = (frame_num - 1) // FRAMES_PER_LATENT + 1
    latents -= latents % chunk_size
    if latents < 1:
        raise ValueError(f"frame_num {frame_num} gives no whole chunk of {chunk_size} latent frames")
    return np.linspace(0, frame_num - 1, latents)


def rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotation matrices -> (N, 4) unit quaternions (w, x, y, z)."""
    out = np.empty((len(rotation), 4))
    for n, m in enumerate(np.asarray(rotation, dtype=np.float64)):
        trace = m[0, 0] + m[1, 1] + m[2, 2]
        # Build from the largest of (trace, diagonal) to stay away from cancellation.
        pick = int(np.argmax([m[0, 0], m[1, 1], m[2, 2], trace]))
        if pick == 3:
            q = [1 + trace, m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]
        elif pick == 0:
            q = [m[2, 1] - m[1, 2], 1 + 2 * m[0, 0] - trace, m[0, 1] + m[1, 0], m[0, 2] + m[2, 0]]
        elif pick == 1:
            q = [m[0, 2] - m[2, 0], m[0, 1] + m[1, 0], 1 + 2 * m[1, 1] - trace, m[1, 2] + m[2, 1]]
        else:
            q = [m[1, 0] - m[0, 1], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], 1 + 2 * m[2, 2] - trace]
        out[n] = q
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (w, x, y, z) -> (N, 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = (q / np.linalg.norm(q, axis=-1, keepdims=True)).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=-2)


def _quaternion_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def slerp(q0: np.ndarray, q1: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Shortest-arc spherical interpolation of (N, 4) unit quaternions at fractions u (N,)."""
    conj = q0 * np.array([1.0, -1.0, -1.0, -1.0])
    delta = _quaternion_product(conj, q1)  # (N, 4) rotation from q0 to q1
    delta *= np.where(delta[:, :1] < 0, -1.0, 1.0)  # q and -q are one rotation: take the short arc
    sin_half = np.linalg.norm(delta[:, 1:], axis=-1)
    half = np.arctan2(sin_half, delta[:, 0])
    axis = np.divide(delta[:, 1:], sin_half[:, None], out=np.zeros_like(delta[:, 1:]),
                     where=sin_half[:, None] > 0)
    step = np.concatenate([np.cos(u * half)[:, None], np.sin(u * half)[:, None] * axis], axis=-1)
    return _quaternion_product(q0, step)


def interpolate_poses(c2ws: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(N, 4, 4) poses at frames 0..N-1 -> (L, 4, 4) float32 poses at `times` (linear t, slerp R)."""
    c2ws = np.asarray(c2ws, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if len(c2ws) < 2:
        raise ValueError(f"need at least 2 poses to interpolate, got {len(c2ws)}")
    seg = np.clip(np.searchsorted(np.arange(len(c2ws)), times, side="right") - 1, 0, len(c2ws) - 2)
    u = times - seg  # source frames are 1 apart; the last segment extrapolates linearly
    quats = rotation_to_quaternion(c2ws[:, :3, :3])
    poses = np.zeros((len(times), 4, 4))
    poses[:, :3, :3] = quaternion_to_rotation(slerp(quats[seg], quats[seg + 1], u))
    t = c2ws[:, :3, 3]
    poses[:, :3, 3] = t[seg] + u[:, None] * (t[seg + 1] - t[seg])
    poses[:, 3, 3] = 1.0
    return poses.astype(np.float32)


def rigid_inverse(poses: np.ndarray) -> np.ndarray:
    """(..., 4, 4) rigid transforms -> their inverses [R^T, -R^T t]."""
    rot_t = np.swapaxes(poses[..., :3, :3], -1, -2)
    inv = np.zeros_like(poses)
    inv[..., :3, :3] = rot_t
    inv[..., :3, 3] = -(rot_t @ poses[..., :3, 3:])[..., 0]
    inv[..., 3, 3] = 1.0
    return inv


def relative_poses(c2ws: np.ndarray, *, framewise: bool = True, normalize: bool = True) -> np.ndarray:
    """(L, 4, 4) poses -> float32 poses relative to the first (framewise: to the previous), unit max translation."""
    c2ws = np.asarray(c2ws, dtype=np.float64)
    rel = rigid_inverse(c2ws[:1]) @ c2ws
    rel[0] = np.eye(4)
    if framewise:
        rel[1:] = rigid_inverse(rel[:-1]) @ rel[1:]
    if normalize:
        max_norm = np.linalg.norm(rel[:, :3, 3], axis=-1).max()
        if max_norm > 0:  # standing still: leave the zero translations alone
            rel[:, :3, 3] /= max_norm
    return rel.astype(np.float32)


def camera_ray_directions(intrinsics: np.ndarray, height: int, width: int) -> np.ndarray:
    """(4,) fx, fy, cx, cy -> (height*width, 3) float32 unit ray directions in camera axes, row-major pixels."""
    fx, fy, cx, cy = np.asarray(intrinsics, dtype=np.float32)
    v, u = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    u = u.reshape(-1) + np.float32(0.5)  # pixel centres
    v = v.reshape(-1) + np.float32(0.5)
    directions = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)  # (h*w, 3)
    return directions / np.linalg.norm(directions, axis=-1, keepdims=True)


def plucker_rays(rel_poses: np.ndarray, intrinsics: np.ndarray, height: int, width: int, *,
                 directions_only: bool = False) -> np.ndarray:
    """(F, 4, 4) poses, (4,) or (F, 4) intrinsics -> (F, h, w, 6) float32 [origin, direction] per pixel (or (F, h, w, 3) directions)."""
    rel = np.asarray(rel_poses, dtype=np.float32)
    ks = np.broadcast_to(np.asarray(intrinsics, dtype=np.float32), (len(rel), 4))
    out = np.empty((len(rel), height * width, 3 if directions_only else 6), dtype=np.float32)
    for f, (pose, k) in enumerate(zip(rel, ks)):
        directions = camera_ray_directions(k, height, width) @ pose[:3, :3].T  # (h*w, 3)
        if directions_only:
            out[f] = directions
        else:
            out[f, :, :3] = pose[:3, 3]
            out[f, :, 3:] = directions
    return out.reshape(len(rel), height, width, -1)


def fold_pixel_blocks(per_pixel: np.ndarray) -> np.ndarray:
    """(F, h, w, C) per-pixel values -> (1, C*64, F, h/8, w/8): each 8x8 block into channels c*64 + c1*8 + c2."""
    frames, height, width, comps = per_pixel.shape
    b = PIXELS_PER_LATENT
    if height % b or width % b:
        raise ValueError(f"frame size {height}x{width}: height and width must be multiples of {b}")
    blocks = per_pixel.reshape(frames, height // b, b, width // b, b, comps)  # (f, h, c1, w, c2, c)
    folded = blocks.transpose(5, 2, 4, 0, 1, 3)  # (c, c1, c2, f, h, w)
    return np.ascontiguousarray(folded.reshape(1, comps * b * b, frames, height // b, width // b))


def clip_camera_condition(c2ws: np.ndarray, intrinsics, height: int, width: int, *,
                          frame_num: int | None = None, chunk_size: int = 3,
                          wasd: np.ndarray | None = None) -> np.ndarray:
    """Whole-clip reference path: video poses -> (1, 384, L, h/8, w/8) `cam` condition, or (1, 448, ...) `act` with `wasd`.

    `intrinsics` is (4,) or per frame (N, 4) for 832x480 (the reference uses
    the first row); `wasd` is (N, 4) W/A/S/D states per video frame.
    """
    c2ws = np.asarray(c2ws, dtype=np.float64)
    frames = usable_frame_count(len(c2ws), len(c2ws) if frame_num is None else frame_num)
    ks = scale_intrinsics(np.asarray(intrinsics, dtype=np.float32).reshape(-1, 4)[0], height, width)
    times = latent_sample_times(frames, chunk_size)
    rel = relative_poses(interpolate_poses(c2ws[:frames], times))
    if wasd is None:
        return fold_pixel_blocks(plucker_rays(rel, ks, height, width))
    states = latent_wasd(wasd, frames, len(times))
    return fold_pixel_blocks(act_pixels(plucker_rays(rel, ks, height, width, directions_only=True), states))


def latent_wasd(wasd: np.ndarray, frame_num: int, latents: int) -> np.ndarray:
    """(N, 4) W/A/S/D per video frame -> (latents, 4) float32: rows 0, 4, 8, ... of the first frame_num frames."""
    states = np.asarray(wasd, dtype=np.float32)[:frame_num:FRAMES_PER_LATENT][:latents]
    if states.shape != (latents, 4):
        raise ValueError(f"wasd gives {states.shape} latent states: expected ({latents}, 4)")
    return states


def act_pixels(directions: np.ndarray, states: np.ndarray) -> np.ndarray:
    """(F, h, w, 3) directions + (F, 4) W/A/S/D states -> (F, h, w, 7)."""
    frames, height, width, _ = directions.shape
    broadcast = np.broadcast_to(states[:, None, None, :], (frames, height, width, 4))
    return np.concatenate([directions, broadcast], axis=-1)


@dataclass(kw_only=True)
class StreamingCameraConfig:
    """How one session turns chunks of video-frame poses into camera conditions."""

    height: int
    """Video frame height in pixels (a multiple of 8)."""
    width: int
    """Video frame width in pixels (a multiple of 8)."""
    intrinsics: tuple[float, float, float, float] = EXAMPLE_INTRINSICS
    """fx, fy, cx, cy for an 832x480 frame; scaled to (height, width)."""
    chunk_latents: int = 3
    """Latent frames per chunk (the DiT's chunk length)."""
    control_type: str = "cam"
    """`cam` (origin + direction, 384 channels) or `act` (direction + W/A/S/D, 448 channels)."""
    min_translation_scale: float = 0.1
    """Smallest divisor of the framewise translations (world units per latent frame)."""
    scale_window_latents: int = 21
    """Latents whose translation norms set the scale (21 = the reference's 81-frame clip)."""


class StreamingCamera:
    """Per-session camera condition, one chunk at a time, from past and present poses only."""

    def __init__(self, config: StreamingCameraConfig):
        if config.control_type not in CONTROL_CHANNELS:
            raise ValueError(f"control_type {config.control_type!r}: expected one of {sorted(CONTROL_CHANNELS)}")
        if config.chunk_latents < 1 or config.min_translation_scale <= 0 or config.scale_window_latents < 0:
            raise ValueError(f"bad streaming camera config {config}: need chunk_latents >= 1, "
                             "min_translation_scale > 0, scale_window_latents >= 0")
        self.config = config
        ks = scale_intrinsics(config.intrinsics, config.height, config.width)
        directions = camera_ray_directions(ks, config.height, config.width)
        folded = fold_pixel_blocks(directions.reshape(1, config.height, config.width, 3))  # (1, 192, 1, h/8, w/8)
        # Rotating rays is linear, so fold the camera-frame rays once and rotate the folded planes per latent.
        self._folded_directions = folded[0, :, 0].reshape(3, PIXELS_PER_LATENT ** 2, *folded.shape[-2:])
        self.reset()

    def reset(self) -> None:
        """Forget the session's past: the next chunk is a first chunk again."""
        self._last_pose: np.ndarray | None = None
        # norms of the current chunk plus the window before it
        self._recent_norms: deque[float] = deque(
            maxlen=self.config.scale_window_latents + self.config.chunk_latents)
        self.latents_done = 0

    @property
    def channels(self) -> int:
        return CONTROL_CHANNELS[self.config.control_type] * PIXELS_PER_LATENT ** 2

    def expected_frames(self) -> int:
        """Video frames the next chunk must have: 1 + 4(n-1) for the first, 4n after."""
        n = self.config.chunk_latents
        return FRAMES_PER_LATENT * n - (FRAMES_PER_LATENT - 1 if self._last_pose is None else 0)

    def chunk(self, poses: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """(F, 4, 4) video-frame poses [+ (F, 8) key fractions for `act`] -> (1, C, n, h/8, w/8) float32."""
        rel, states = self.advance(poses, keys)
        return self._fold(rel, states)

    def chunk_on(self, poses: np.ndarray, keys: np.ndarray | None, device) -> "torch.Tensor":
        """`chunk` built on `device`: only the (n, 3, 4) relative poses cross from the host; equal to `chunk`."""
        rel, states = self.advance(poses, keys)
        c = self.config
        directions = folded_directions_on(c.height, c.width, tuple(c.intrinsics), str(device))
        return fold_on_device(rel, states, directions)

    def advance(self, poses: np.ndarray, keys: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Move the session on by one chunk: (n, 4, 4) float32 relative latent poses, (n, 4) W/A/S/D or None."""
        poses = np.asarray(poses, dtype=np.float64)
        expected = self.expected_frames()
        if poses.shape != (expected, 4, 4):
            raise ValueError(f"chunk poses shape {poses.shape}: expected ({expected}, 4, 4)")
        wasd = self._wasd_rows(keys, expected)  # validated before any state changes
        first = self._last_pose is None
        picks = np.arange(0 if first else FRAMES_PER_LATENT - 1, expected, FRAMES_PER_LATENT)
        latent_poses = poses[picks]  # (n, 4, 4) at the last video frame of each latent
        previous = np.concatenate([latent_poses[:1] if first else self._last_pose[None], latent_poses[:-1]])
        rel = rigid_inverse(previous) @ latent_poses  # (n, 4, 4) framewise
        if first:
            rel[0] = np.eye(4)
        self._recent_norms.extend(np.linalg.norm(rel[:, :3, 3], axis=-1).tolist())
        rel[:, :3, 3] /= max(self.config.min_translation_scale, max(self._recent_norms))
        self._last_pose = latent_poses[-1].copy()
        self.latents_done += len(picks)
        states = None if wasd is None else wasd[picks]  # (n, 4) W/A/S/D at each latent's own frame
        return rel.astype(np.float32), states

    def _wasd_rows(self, keys: np.ndarray | None, frames: int) -> np.ndarray | None:
        """(F, 4) W/A/S/D fractions of the chunk for `act`; None for `cam`."""
        if self.config.control_type != "act":
            return None
        got = None if keys is None else np.shape(keys)
        if got != (frames, 8):
            raise ValueError(f"control_type 'act' needs ({frames}, 8) key fractions, got {got}")
        return np.asarray(keys, dtype=np.float32)[:, :4]

    def _fold(self, rel: np.ndarray, states: np.ndarray | None) -> np.ndarray:
        """(n, 4, 4) float32 relative poses [+ (n, 4) W/A/S/D] -> (1, C, n, h/8, w/8) folded condition."""
        block = PIXELS_PER_LATENT ** 2
        _, _, cells_h, cells_w = self._folded_directions.shape
        out = np.empty((1, self.channels, len(rel), cells_h, cells_w), dtype=np.float32)
        directions_at = 0 if states is not None else 3 * block
        for f, pose in enumerate(rel):
            rays = np.tensordot(pose[:3, :3], self._folded_directions, axes=(1, 0))  # (3, 64, h/8, w/8)
            out[0, directions_at:directions_at + 3 * block, f] = rays.reshape(3 * block, cells_h, cells_w)
            # origins (cam) or W/A/S/D (act): one value per component, the same on every pixel
            extra = pose[:3, 3] if states is None else states[f]
            extra_at = 0 if states is None else 3 * block
            out[0, extra_at:extra_at + len(extra) * block, f] = np.repeat(extra, block)[:, None, None]
        return out


@functools.lru_cache(maxsize=16)
def folded_directions_on(height: int, width: int, intrinsics: tuple[float, ...], device: str) -> "torch.Tensor":
    """(3, 64, h/8, w/8) float32 camera-frame ray directions of one frame size, made once per size and device."""
    import torch

    ks = scale_intrinsics(intrinsics, height, width)
    folded = fold_pixel_blocks(camera_ray_directions(ks, height, width).reshape(1, height, width, 3))
    planes = folded[0, :, 0].reshape(3, PIXELS_PER_LATENT ** 2, *folded.shape[-2:])
    return torch.from_numpy(np.ascontiguousarray(planes)).to(device)


def fold_on_device(rel: np.ndarray, states: np.ndarray | None, directions: "torch.Tensor") -> "torch.Tensor":
    """(n, 4, 4) float32 relative poses [+ (n, 4) W/A/S/D] -> (1, C, n, h/8, w/8) on the directions' device."""
    import torch

    n = len(rel)
    extra = rel[:, :3, 3] if states is None else states  # (n, 3) origins or (n, 4) W/A/S/D
    host = np.concatenate([rel[:, :3, :3].reshape(n, 9), extra], axis=1).astype(np.float32)  # (n, 9 + k)
    packed = torch.from_numpy(host).to(directions.device)  # the only host -> device copy
    d = directions  # (3, 64, h, w)
    block = PIXELS_PER_LATENT ** 2
    rays = packed[:, :9].reshape(n, 3, 3) @ d.reshape(3, -1)  # (n, 3, 64*h*w): R @ camera-frame rays
    rays = rays.reshape(n, 3 * block, *d.shape[-2:]).transpose(0, 1)  # (192, n, h, w)
    planes = packed[:, 9:].repeat_interleave(block, dim=1).T[:, :, None, None]  # (k*64, n, 1, 1)
    planes = planes.expand(-1, -1, *d.shape[-2:])
    parts = [planes, rays] if states is None else [rays, planes]  # cam: origins first; act: directions first
    return torch.cat(parts, dim=0)[None]  # (1, C, n, h, w)

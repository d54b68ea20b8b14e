"""Which terrain sample each (elevation, azimuth) cell sees: the per-azimuth front-to-back march.

Every pixel ray of a roll-free camera lies in the vertical plane of its
world azimuth, so the terrain is marched once per azimuth column at shared
horizontal distances t_k. A sample at distance t with height h is seen at
tan(elevation) s = (h - eye) / t; a ray at elevation e meets the ground at
the first sample whose s reaches tan(e). Marching a column front to back
while keeping the highest row reached so far gives every cell its first hit,
exactly (kernels.march_columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .camera import RayGrid
from .kernels import march_columns
from .scene import Scene


@dataclass(kw_only=True)
class MarchConfig:
    """March resolution."""

    near_m: float = 0.3  # first sample distance
    far_m: float = 6000.0  # last sample distance; the haze has swallowed the land by then
    depth_ratio: float = 1.075  # each sample distance is this times the one before
    mip_spacing: float = 0.035  # pick the mip level whose texel is this fraction of the distance


@dataclass(kw_only=True)
class GroundSamples:
    """The march of one frame, column-major (kernels.march_columns)."""

    t: np.ndarray  # (K,) horizontal sample distances in metres
    # (A, K, 5) per sample: tan(elevation) it is seen at, haze fraction, lit hazed r, g, b;
    # one column's samples lie together, so shading a column reads them from L1.
    packed: np.ndarray
    hit: np.ndarray  # (A, R) int16 first sample seen by each grid cell; K where none (sky)
    sky_row: np.ndarray  # (A,) int32 first row of each column that sees sky (R: none)


def march_distances(cfg: MarchConfig) -> np.ndarray:
    """(K,) float32 geometric sample distances from near_m to far_m."""
    n = int(math.ceil(math.log(cfg.far_m / cfg.near_m) / math.log(cfg.depth_ratio))) + 1
    return (cfg.near_m * cfg.depth_ratio ** np.arange(n)).astype(np.float32)


def sample_levels(scene: Scene, t: np.ndarray, x: float, z: float, mip_spacing: float) -> tuple:
    """Per sample distance: the mip level read (first texel, size) and the texel coordinates
    (u, v at the eye, texels per unit of sin/cos azimuth); (K,) arrays each.

    Each distance reads the mip level whose texel is about mip_spacing * t.
    """
    levels = scene.levels
    want = np.log2(np.maximum(t * mip_spacing / levels[0][2], 1.0))
    lvl = np.minimum(np.floor(want).astype(np.int64), len(levels) - 1)  # (K,)
    first = np.array([lv[0] for lv in levels], np.int64)[lvl]
    size = np.array([lv[1] for lv in levels], np.int64)[lvl]
    inv_cell = (1.0 / np.array([lv[2] for lv in levels]))[lvl].astype(np.float32)
    centre = (0.5 - 0.5 / 2.0 ** lvl).astype(np.float32)  # mip texel centre offset
    tc = t * inv_cell  # distance in texels of each sample's level
    return first, size, np.float32(x) * inv_cell - centre, np.float32(z) * inv_cell - centre, tc


def row_bounds(grid: RayGrid) -> np.ndarray:
    """(R,) float64 tan of each grid row's lowest elevation: a sample seen at tan(elevation)
    s covers row r when s >= bound[r] (rows past the zenith or nadir: never, always)."""
    el = grid.el0 + grid.del_ * np.arange(grid.n_el)
    bound = np.tan(np.clip(el, -math.pi / 2, math.pi / 2))
    bound[el >= math.pi / 2] = np.inf
    bound[el <= -math.pi / 2] = -np.inf
    return bound


def march(scene: Scene, cfg: MarchConfig, bounds: np.ndarray, x: float, z: float, eye: float,
          sin_az: np.ndarray, cos_az: np.ndarray, haze: np.ndarray) -> GroundSamples:
    """Sample, light, haze and resolve visibility of the terrain for one frame.

    bounds: (R,) row_bounds of the frame's grid; haze: (3, A) colour the land fades to in
    each column. A sample at distance t with
    height h is seen at tan(elevation) s = (h - eye) / t; a cell at elevation e sees
    the first sample whose s reaches tan(e).
    """
    t = march_distances(cfg)
    first, size, u_base, v_base, tc = sample_levels(scene, t, x, z, cfg.mip_spacing)
    look = scene.look
    n_az = sin_az.shape[0]
    packed = np.empty((n_az, t.shape[0], 5), np.float32)
    hit = np.empty((n_az, bounds.shape[0]), np.int16)
    sky_row = np.empty(n_az, np.int32)
    march_columns(scene.texels, first, size, u_base, v_base, tc, t, (-look.fog_density * t).astype(np.float32),
                  float(eye), float(scene.water_level), np.float32(-1.0 / look.fog_height_m),
                  sin_az, cos_az, haze, bounds, packed, hit, sky_row)
    return GroundSamples(t=t, packed=packed, hit=hit, sky_row=sky_row)

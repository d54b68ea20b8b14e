"""Which terrain sample each (elevation, azimuth) cell sees: the per-azimuth front-to-back march.

Every pixel ray of a roll-free camera lies in the vertical plane of its
world azimuth, so the terrain is marched once per azimuth column at shared
horizontal distances t_k. A sample at distance t with height h is seen at
tan(elevation) s = (h - eye) / t; a ray at elevation e meets the ground at
the first sample whose s reaches tan(e). Scattering each sample's k into
the highest grid row it covers (smallest k wins) and taking a running
minimum from the top row down gives every cell its first hit, exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .camera import RayGrid
from .fastmath import arctan
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
    """The march of one frame."""

    t: np.ndarray  # (K,) horizontal sample distances in metres
    # (5, K, A) per sample: tan(elevation) it is seen at, haze fraction, lit hazed r, g, b;
    # one array so that shading gathers a sample with a single take.
    packed: np.ndarray
    hit: np.ndarray  # (R, A) int16 first sample seen by each grid cell; K where none (sky)


def march_distances(cfg: MarchConfig) -> np.ndarray:
    """(K,) float32 geometric sample distances from near_m to far_m."""
    n = int(math.ceil(math.log(cfg.far_m / cfg.near_m) / math.log(cfg.depth_ratio))) + 1
    return (cfg.near_m * cfg.depth_ratio ** np.arange(n)).astype(np.float32)


def sample_terrain(scene: Scene, t: np.ndarray, sin_az: np.ndarray, cos_az: np.ndarray,
                   x: float, z: float, mip_spacing: float) -> np.ndarray:
    """Bilinear (height, r, g, b) at distances t along column azimuths from (x, z); (4, K, A).

    Each distance reads the mip level whose texel is about mip_spacing * t.
    """
    levels = scene.levels
    want = np.log2(np.maximum(t * mip_spacing / levels[0][2], 1.0))
    lvl = np.minimum(np.floor(want).astype(np.int64), len(levels) - 1)  # (K,)
    first = np.array([lv[0] for lv in levels], np.int32)[lvl][:, None]
    size = np.array([lv[1] for lv in levels], np.int32)[lvl][:, None]
    inv_cell = (1.0 / np.array([lv[2] for lv in levels]))[lvl].astype(np.float32)[:, None]
    centre = (0.5 - 0.5 / 2.0 ** lvl).astype(np.float32)[:, None]  # mip texel centre offset
    mask = size - 1
    tc = t[:, None] * inv_cell  # (K, 1) distance in texels of each row's level
    u = (np.float32(x) * inv_cell - centre) + tc * sin_az[None]  # (K, A)
    v = (np.float32(z) * inv_cell - centre) + tc * cos_az[None]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0  # (K, A)
    iu, iv = u0.astype(np.int32) & mask, v0.astype(np.int32) & mask
    iu1 = (iu + 1) & mask
    row0 = first + iv * size
    row1 = first + ((iv + 1) & mask) * size
    tex = scene.texels  # (4, texels)
    a = np.take(tex, row0 + iu, axis=1)  # (4, K, A)
    a += (np.take(tex, row0 + iu1, axis=1) - a) * fu
    b = np.take(tex, row1 + iu, axis=1)
    b += (np.take(tex, row1 + iu1, axis=1) - b) * fu
    a += (b - a) * fv
    return a


def first_hits(s: np.ndarray, grid: RayGrid) -> np.ndarray:
    """(R, A) int16 index of the first sample each grid cell sees (K where it sees none)."""
    k_count, n_az = s.shape
    n_el = grid.n_el
    # Highest row each sample covers, shifted by one so row 0 collects samples below the grid.
    row = np.floor((arctan(s) - grid.el0) * (1.0 / grid.del_)).astype(np.int32) + 1
    np.clip(row, 0, n_el, out=row)
    cells = (row * n_az + np.arange(n_az, dtype=np.int32)[None]).ravel()
    hit = np.full((n_el + 1) * n_az, k_count, np.int16)
    # Later writes win, so writing k from last to first leaves the smallest k in each cell.
    np.put(hit, cells[::-1], np.repeat(np.arange(k_count, dtype=np.int16), n_az)[::-1])
    hit = hit.reshape(n_el + 1, n_az)
    return np.minimum.accumulate(hit[::-1], axis=0)[::-1][1:]  # (R, A)


def march(scene: Scene, cfg: MarchConfig, grid: RayGrid, x: float, z: float, eye: float,
          sin_az: np.ndarray, cos_az: np.ndarray, haze: np.ndarray) -> GroundSamples:
    """Sample, light, haze and resolve visibility of the terrain for one frame.

    haze: (3, A) colour the land fades to in each column.
    """
    t = march_distances(cfg)
    samples = sample_terrain(scene, t, sin_az, cos_az, x, z, cfg.mip_spacing)  # (4, K, A)
    height = samples[0]
    packed = np.empty((5,) + height.shape, np.float32)
    s = np.subtract(height, np.float32(eye), out=packed[0])
    s /= t[:, None]
    look = scene.look
    # Haze thins with altitude: density at the mean height of the eye and the sample.
    mean_h = np.maximum(0.5 * (height + np.float32(eye)) - scene.water_level, 0.0)
    thin = np.exp(mean_h * np.float32(-1.0 / look.fog_height_m))
    fog = np.exp(thin * (-look.fog_density * t)[:, None])
    fog = np.subtract(1.0, fog, out=packed[1])  # (K, A)
    fog[-1] = 1.0  # the last sample is all haze, so the land melts into the horizon
    colour = samples[1:]
    colour += (haze[:, None, :] - colour) * fog
    packed[2:] = colour
    return GroundSamples(t=t, packed=packed, hit=first_hits(s, grid))

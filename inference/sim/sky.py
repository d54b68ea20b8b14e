"""Sky, sun, clouds, stars and haze colour as functions of a ray's elevation and azimuth.

Colours are channel-first: (3, rows, columns).
"""

from __future__ import annotations

import math

import numpy as np

from .fastmath import power
from .kernels import sky_cells
from .scene import Scene

SUN_RADIUS_RAD = math.radians(0.9)  # drawn a little larger than the real sun to read at 832 px
CLOUD_HEIGHT_M = 1400.0  # cloud layer altitude above the camera
# Per-row and per-column terms handed to kernels.sky_cells, in column order.
ROW_TERMS = ("sin_el", "cos_el", "t", "below", "sin_el_sin_s", "sun_row", "show", "cloud_dist", "star_bin")
COL_TERMS = ("cos_s_cos_daz", "sin_az", "cos_az", "star_bin")


def rgb(c, ndim: int = 3) -> np.ndarray:
    """A colour as a float32 (3, 1, ...) array that broadcasts over ndim-1 trailing axes."""
    return np.asarray(c, np.float32).reshape((3,) + (1,) * (ndim - 1))


def sun_angles(scene: Scene) -> tuple[float, float, float]:
    """(azimuth, sin elevation, cos elevation) of the sun."""
    sx, sy, sz = (float(v) for v in scene.sun_dir)
    return math.atan2(sx, sz), sy, math.hypot(sx, sz)


def haze_colour(scene: Scene, cos_dsun_az: np.ndarray) -> np.ndarray:
    """Colour of distant haze at the horizon for columns at the given cos(azimuth - sun); (3, A)."""
    look = scene.look
    _, sin_s, cos_s = sun_angles(scene)
    cos_g = np.maximum(cos_dsun_az * cos_s, 0.0)[None]  # (1, A) cos of angle to the sun
    p6 = power(cos_g, 6)
    glow = 0.35 * p6 + 0.25 * power(p6, 7)
    near_horizon = math.exp(-max(sin_s, 0.0) * 4.0)  # a low sun tints the whole horizon
    return rgb(look.sky_horizon, 2) + rgb(look.glow, 2) * glow * (0.4 + 0.6 * near_horizon)


def sky_colour(scene: Scene, sin_el: np.ndarray, cos_el: np.ndarray, world_az: np.ndarray,
               cam_xz: tuple[float, float]) -> np.ndarray:
    """Sky seen along rays at row elevations x column world azimuths; (3, R, A) float32.

    sin_el, cos_el: (R,) float32 per row; world_az: (A,) float32 per column; cam_xz:
    camera (x, z) in metres. Per-row and per-column terms are computed here, the
    per-cell sum in the compiled `sky_cells`.
    """
    look = scene.look
    sun_az, sin_s, cos_s = sun_angles(scene)
    el = np.arcsin(np.clip(sin_el, -1, 1))
    rows = np.zeros((sin_el.shape[0], len(ROW_TERMS)), np.float32)
    rows[:, 0], rows[:, 1] = sin_el, cos_el
    rows[:, 2] = np.sqrt(np.maximum(sin_el, 0.0))  # 0 at the horizon, 1 overhead
    rows[:, 3] = np.minimum(np.maximum(-sin_el, 0.0) * 3.0, 1.0)  # below the horizon
    rows[:, 4] = sin_el * np.float32(sin_s)
    rows[:, 5] = np.abs(el - math.asin(max(-1.0, min(1.0, sin_s)))) < SUN_RADIUS_RAD * 12  # sun disc rows
    rows[:, 6] = np.clip((sin_el - 0.03) * 6.0, 0.0, 1.0)  # clouds thin out toward the horizon
    # Ground distance to where each ray meets the cloud layer, in cloud texels.
    inv = 1.0 / scene.ground.config.cloud_cell_m
    rows[:, 7] = CLOUD_HEIGHT_M * inv * cos_el / np.maximum(sin_el, 1e-3)
    rows[:, 8] = np.floor(el * 240.0)  # star bins, ~0.24 deg
    cols = np.empty((world_az.shape[0], len(COL_TERMS)), np.float32)
    cols[:, 0] = np.float32(cos_s) * np.cos(world_az - sun_az).astype(np.float32)
    cols[:, 1], cols[:, 2] = np.sin(world_az), np.cos(world_az)
    cols[:, 3] = np.floor(np.mod(world_az, 2 * math.pi) * 240.0)
    params = np.array([
        *look.sky_horizon, *look.sky_zenith, *look.glow, *look.sun_colour, *look.cloud_colour,
        0.45 + 0.55 * look.sun_strength, look.stars if look.stars > 0.01 else 0.0,
        look.sun_disc * 2.0 if look.sun_disc > 0 else 0.0, 1.0 if look.cloud_cover > 0.01 else 0.0,
        cam_xz[0] * inv, cam_xz[1] * inv], np.float32)
    out = np.empty((3, sin_el.shape[0], world_az.shape[0]), np.float32)
    sky_cells(rows, cols, params, math.cos(SUN_RADIUS_RAD), scene.cloud.reshape(-1), scene.cloud.shape[0], out)
    return out


"""Sky, sun, clouds, stars and haze colour as functions of a ray's elevation and azimuth.

Colours are channel-first: (3, rows, columns).
"""

from __future__ import annotations

import math

import numpy as np

from .fastmath import power
from .look import Look
from .scene import Scene

SUN_RADIUS_RAD = math.radians(0.9)  # drawn a little larger than the real sun to read at 832 px
CLOUD_HEIGHT_M = 1400.0  # cloud layer altitude above the camera


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

    sin_el, cos_el: (R,) per row; world_az: (A,) per column; cam_xz: camera (x, z) in metres.
    """
    look = scene.look
    sun_az, sin_s, cos_s = sun_angles(scene)
    t = np.sqrt(np.maximum(sin_el, 0.0))[:, None]  # (R, 1) 0 at the horizon, 1 overhead
    below = np.minimum(np.maximum(-sin_el, 0.0) * 3.0, 1.0)[:, None]
    base = (rgb(look.sky_horizon) * (1 - t) + rgb(look.sky_zenith) * t) * (1.0 - 0.25 * below)
    cos_daz = np.cos(world_az - sun_az).astype(np.float32)  # (A,)
    cos_g = cos_el[:, None] * (cos_s * cos_daz)[None] + (sin_el * sin_s)[:, None]  # (R, A)
    pos = np.maximum(cos_g, 0.0)
    p6 = power(pos, 6)
    p48 = power(p6, 8)
    glow = (0.3 * p6 + 0.35 * p48) * (1.0 - 0.6 * t) * (0.45 + 0.55 * look.sun_strength)
    sky = base + rgb(look.glow) * glow  # (3, R, A)
    if look.stars > 0.01:
        sky += _stars(sin_el, world_az, look.stars)
    if look.sun_disc > 0:
        _add_sun_disc(look, sky, cos_g, sin_el, sin_s)
    if look.cloud_cover > 0.01:
        _add_clouds(scene, sky, sin_el, cos_el, world_az, cam_xz, p6)
    return sky


def _add_sun_disc(look: Look, sky: np.ndarray, cos_g: np.ndarray, sin_el: np.ndarray,
                  sin_s: float) -> None:
    """Draw the sun (or moon) disc and its bright core halo, in place, on rows near it."""
    near = np.abs(np.arcsin(np.clip(sin_el, -1, 1)) - math.asin(max(-1.0, min(1.0, sin_s))))
    rows = np.nonzero(near < SUN_RADIUS_RAD * 12)[0]
    if rows.size == 0:
        return
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    cg = cos_g[lo:hi]
    edge = math.cos(SUN_RADIUS_RAD)
    disc = np.clip((cg - edge) * (6.0 / (1.0 - edge)), 0.0, 1.0) * (look.sun_disc * 2.0)
    halo = power(np.maximum(cg, 0.0), 600) * 0.5
    sky[:, lo:hi] += disc * (rgb(look.sun_colour) * 0.5 + 0.6) + halo * rgb(look.glow)


def _add_clouds(scene: Scene, sky: np.ndarray, sin_el: np.ndarray, cos_el: np.ndarray,
                world_az: np.ndarray, cam_xz: tuple[float, float], sun_p6: np.ndarray) -> None:
    """Blend the cloud layer over `sky` in place; sun_p6 brightens clouds near the sun."""
    look = scene.look
    cfg = scene.ground.config
    cover = scene.cloud
    m = cover.shape[0]
    show = np.clip((sin_el - 0.03) * 6.0, 0.0, 1.0)  # (R,) clouds thin out toward the horizon
    rows = np.nonzero(show > 0)[0]
    if rows.size == 0:
        return
    lo, hi = int(rows[0]), int(rows[-1]) + 1  # `show` rises with elevation: rows are a band
    inv = 1.0 / cfg.cloud_cell_m
    # Ground distance to where each ray meets the cloud layer, in cloud texels; (r, 1).
    dist = (CLOUD_HEIGHT_M * inv * cos_el[lo:hi] / np.maximum(sin_el[lo:hi], 1e-3))
    dist = dist.astype(np.float32)[:, None]
    u = np.float32(cam_xz[0] * inv) + dist * np.sin(world_az)[None]  # (r, A)
    v = np.float32(cam_xz[1] * inv) + dist * np.cos(world_az)[None]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    iu, iv = u0.astype(np.int32) & (m - 1), v0.astype(np.int32) & (m - 1)
    iu1 = (iu + 1) & (m - 1)
    r0, r1 = iv * m, ((iv + 1) & (m - 1)) * m
    flat = cover.reshape(-1)
    top = np.take(flat, r0 + iu)
    top += (np.take(flat, r0 + iu1) - top) * fu
    bot = np.take(flat, r1 + iu)
    bot += (np.take(flat, r1 + iu1) - bot) * fu
    amount = (top + (bot - top) * fv) * show[lo:hi, None]  # (r, A)
    shade = 1.0 - 0.28 * amount + 0.25 * power(sun_p6[lo:hi], 2)
    part = sky[:, lo:hi]
    part += (rgb(look.cloud_colour) * shade - part) * (amount * 0.92)


def _stars(sin_el: np.ndarray, world_az: np.ndarray, strength: float) -> np.ndarray:
    """Sparse fixed star points hashed from (elevation, azimuth) bins; (R, A)."""
    el_bin = np.floor(np.arcsin(np.clip(sin_el, -1, 1)) * 240.0).astype(np.int64)  # ~0.24 deg bins
    az_bin = np.floor(np.mod(world_az, 2 * math.pi) * 240.0).astype(np.int64)
    h = (el_bin[:, None] * 73856093) ^ (az_bin[None] * 19349663)
    h = (h ^ (h >> 13)) * 1274126177
    h = (h ^ (h >> 16)) & 0xFFFF
    bright = np.where(h < 90, (h.astype(np.float32) / 90.0) * 0.8 + 0.2, 0.0)
    return (bright * strength * (sin_el[:, None] > 0.02)).astype(np.float32)

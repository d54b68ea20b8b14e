"""Render one sim frame: an exact per-azimuth terrain march, sky, haze, then a warp to pixels.

Every pixel ray of a roll-free camera lies in the vertical plane of its
world azimuth, so the terrain is marched once per azimuth column at shared
depths t_k. A sample at depth t with height h is seen at tan(elevation)
s = (h - eye) / t; the first sample k whose s reaches a ray's tan(elevation)
is where that ray meets the ground. Samples are scattered into an
(elevation, azimuth) grid keeping the smallest k per cell, and a running
minimum from the top row down gives every cell its first hit. Between the
hit sample and the one before it the surface is taken as linear, so depth
and colour are interpolated exactly where the ray crosses it. Each pixel
then copies the cell of its exact (azimuth, elevation): correct for any
pitch, including views straight up or down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .camera import Camera, decompose_pose
from .fastmath import arctan, power
from .scene import Scene
from .sky import haze_colour, sky_colour, sun_angles


@dataclass(kw_only=True)
class RenderConfig:
    """World scale and march resolution."""

    metres_per_unit: float = 1.6  # pose units to metres: 0.05 per frame at 16 fps walks at 1.3 m/s
    eye_height_m: float = 1.7  # eye above the ground under the camera
    near_m: float = 0.3  # first march depth
    far_m: float = 6000.0  # last march depth; the haze has swallowed the land by then
    depth_ratio: float = 1.06  # each march depth is this times the one before
    detail_fade_m: float = 45.0  # close-up ground texture fades out by this distance


@dataclass(kw_only=True)
class View:
    """A rendered frame and, on request, its per-pixel depth."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray | None = None  # (H, W) float32 metres along the ray, inf for sky
    eye: tuple[float, float, float] = (0.0, 0.0, 0.0)  # camera (x, height, z) in world metres


def _march_depths(cfg: RenderConfig) -> np.ndarray:
    n = int(math.ceil(math.log(cfg.far_m / cfg.near_m) / math.log(cfg.depth_ratio))) + 1
    return (cfg.near_m * cfg.depth_ratio ** np.arange(n)).astype(np.float32)  # (K,)


def eye_position(scene: Scene, pose: np.ndarray, cfg: RenderConfig):
    """(pose decomposition, world x, eye height, world z) for a pose; x, z wrapped to the tile."""
    cp = decompose_pose(pose)
    terrain = scene.terrain
    mx, mz = cp.x * cfg.metres_per_unit, cp.z * cfg.metres_per_unit
    ground = max(terrain.ground_height(mx, mz), scene.water_level)
    eye = ground + cfg.eye_height_m - cp.y * cfg.metres_per_unit
    period = terrain.config.size * terrain.config.cell_m
    x = (mx + terrain.origin[0]) % period
    z = (mz + terrain.origin[1]) % period
    return cp, x, eye, z


def _sample_terrain(scene: Scene, t: np.ndarray, sin_az: np.ndarray, cos_az: np.ndarray,
                    x: float, z: float) -> np.ndarray:
    """Bilinear (height, r, g, b) at depths t along column azimuths; (K, A, 4).

    Each depth reads the mip level whose texel is about the radial sample spacing.
    """
    base_cell = scene.levels[0][2]
    want = np.log2(np.maximum(t * 0.035 / base_cell, 1.0))
    lvl = np.minimum(np.floor(want).astype(np.int64), len(scene.levels) - 1)  # (K,)
    first = np.array([lv[0] for lv in scene.levels], np.int32)[lvl][:, None]
    size = np.array([lv[1] for lv in scene.levels], np.int32)[lvl][:, None]
    inv_cell = (1.0 / np.array([lv[2] for lv in scene.levels]))[lvl].astype(np.float32)[:, None]
    centre = (0.5 - 0.5 / 2.0 ** lvl).astype(np.float32)[:, None]  # mip texel centre offset
    mask = size - 1
    tc = t[:, None] * inv_cell  # (K, 1) depth in texels of each row's level
    u = (np.float32(x) * inv_cell - centre) + tc * sin_az[None]  # (K, A)
    v = (np.float32(z) * inv_cell - centre) + tc * cos_az[None]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0)[..., None], (v - v0)[..., None]  # (K, A, 1)
    iu, iv = u0.astype(np.int32) & mask, v0.astype(np.int32) & mask
    iu1 = (iu + 1) & mask
    row0 = first + iv * size
    row1 = first + ((iv + 1) & mask) * size
    tex = scene.texels
    # np.take is several times faster than fancy indexing for these gathers.
    a = np.take(tex, row0 + iu, axis=0)
    a += (np.take(tex, row0 + iu1, axis=0) - a) * fu
    b = np.take(tex, row1 + iu, axis=0)
    b += (np.take(tex, row1 + iu1, axis=0) - b) * fu
    a += (b - a) * fv
    return a  # (K, A, 4)


def _water(scene: Scene, col: np.ndarray, s: np.ndarray, height: np.ndarray,
           cos_daz: np.ndarray) -> None:
    """Add sky reflection and sun glitter to samples on the water surface, in place.

    col: (K, A, 3) sample colours; s, height: (K, A); cos_daz: (A,) cos(azimuth - sun).
    """
    look = scene.look
    flat_h = height.reshape(-1)
    wet_at = np.flatnonzero(flat_h < scene.water_level + 0.2)
    if wet_at.size == 0:
        return
    n_az = s.shape[1]
    wet = np.minimum((scene.water_level + 0.2 - np.take(flat_h, wet_at)) * 5.0, 1.0)
    sv = np.take(s.reshape(-1), wet_at)
    sin_down = np.maximum(-sv / np.sqrt(1.0 + sv * sv), 0.0)  # ray angle below the horizon
    fresnel = 0.03 + 0.97 * power(1.0 - sin_down, 5)
    _, sin_s, cos_s = sun_angles(scene)
    up = np.sqrt(sin_down)[:, None]
    sky = (np.asarray(look.sky_horizon, np.float32) * (1 - up)
           + np.asarray(look.sky_zenith, np.float32) * up)
    cos_el = np.sqrt(1.0 - sin_down * sin_down)
    cda = np.take(cos_daz, wet_at % n_az)
    cos_g = np.maximum(cos_el * (cos_s * cda) + sin_down * sin_s, 0.0)
    g12 = power(cos_g, 12)
    glitter = (power(g12, 10) * 2.5 + g12 * 0.25) * look.sun_strength
    refl = sky + np.asarray(look.sun_colour, np.float32) * glitter[:, None]
    flat_col = col.reshape(-1, 3)
    c = np.take(flat_col, wet_at, axis=0)
    c += (refl - c) * (fresnel * wet)[:, None]
    flat_col[wet_at] = c


def render_view(scene: Scene, camera: Camera, pose: np.ndarray, *, with_depth: bool = False,
                config: RenderConfig | None = None) -> View:
    """Render the frame seen from a camera-to-world pose (OpenCV axes, see module docstring)."""
    cfg = config or RenderConfig()
    cp, x, eye, z = eye_position(scene, pose, cfg)
    grid = camera.grid(cp.pitch)
    n_el, n_az = grid.n_el, grid.n_az
    rel_az = grid.az0 + grid.daz * np.arange(n_az)
    world_az = (cp.yaw + rel_az).astype(np.float32)  # (A,)
    sin_az, cos_az = np.sin(world_az), np.cos(world_az)
    el = np.clip(grid.el0 + grid.del_ * np.arange(n_el), -1.5707, 1.5707)  # (R,) row elevations
    t = _march_depths(cfg)  # (K,)
    k_count = t.shape[0]

    samples = _sample_terrain(scene, t, sin_az, cos_az, x, z)  # (K, A, 4)
    height = samples[..., 0]
    col = samples[..., 1:]  # (K, A, 3) lit ground colour
    s = (height - np.float32(eye)) / t[:, None]  # (K, A) tan of each sample's elevation
    sun_az = sun_angles(scene)[0]
    cos_daz = np.cos(world_az - sun_az).astype(np.float32)
    _water(scene, col, s, height, cos_daz)
    look = scene.look
    fog_h = np.exp(-(np.maximum(0.5 * (height + eye) - scene.water_level, 0.0)) / look.fog_height_m)
    fog = 1.0 - np.exp(-(look.fog_density * t[:, None]) * fog_h)  # (K, A)
    fog[-1] = 1.0  # the last sample is all haze, so the land melts into the horizon
    haze = haze_colour(scene, cos_daz)  # (A, 3)
    col += (haze[None] - col) * fog[..., None]

    # First hit per (elevation row, column): scatter k, running minimum from the top row down.
    row = np.floor((arctan(s) - grid.el0) * (1.0 / grid.del_)).astype(np.int32) + 1  # 0 = dump
    np.clip(row, 0, n_el, out=row)
    cells = (row * n_az + np.arange(n_az, dtype=np.int32)[None]).ravel()
    hit = np.full((n_el + 1) * n_az, k_count, np.int16)
    # Later writes win, so writing k from last to first leaves the smallest k in each cell.
    np.put(hit, cells[::-1], np.repeat(np.arange(k_count, dtype=np.int16), n_az)[::-1])
    hit = np.minimum.accumulate(hit.reshape(n_el + 1, n_az)[::-1], axis=0)[::-1][1:]  # (R, A)

    ground_rows = n_el - int(np.argmax(np.any(hit < k_count, axis=1)[::-1]))
    if not np.any(hit < k_count):
        ground_rows = 0
    sky_from = int(np.argmax(np.any(hit >= k_count, axis=1))) if np.any(hit >= k_count) else n_el
    out = np.empty((n_el, n_az, 3), np.float32)
    depth = np.full((n_el, n_az), np.inf, np.float32) if with_depth else None
    if sky_from < n_el:
        rows = el[sky_from:]
        out[sky_from:] = sky_colour(scene, np.sin(rows).astype(np.float32),
                                    np.cos(rows).astype(np.float32), world_az, (x, z))
    if ground_rows > 0:
        _shade_ground(scene, cfg, out, depth, hit[:ground_rows], s, col, t, el[:ground_rows],
                      (x, z), sin_az, cos_az)
    rgb = _to_pixels(out, grid.pixel_cell, camera.height, camera.width)
    depth_px = np.take(depth.ravel(), grid.pixel_cell).reshape(camera.height, camera.width) if with_depth else None
    return View(rgb=rgb, depth=depth_px, eye=(x, eye, z))


def _shade_ground(scene: Scene, cfg: RenderConfig, out: np.ndarray, depth: np.ndarray | None,
                  hit: np.ndarray, s: np.ndarray, col: np.ndarray, t: np.ndarray, el: np.ndarray,
                  cam_xz: tuple[float, float], sin_az: np.ndarray, cos_az: np.ndarray) -> None:
    """Fill the ground cells of `out` (rows below the highest hit) in place."""
    k_count, n_az = s.shape
    rows = hit.shape[0]
    ground = hit < k_count  # (r, A)
    k = np.minimum(hit, k_count - 1).astype(np.int32)
    kp = np.maximum(k - 1, 0)
    cols = np.arange(n_az, dtype=np.int32)[None]
    idx, idxp = k * n_az + cols, kp * n_az + cols
    s_flat = s.ravel()
    s_hit, s_prev = np.take(s_flat, idx), np.take(s_flat, idxp)
    tan_el = np.tan(el).astype(np.float32)[:, None]  # (r, 1)
    # Where the ray crosses the segment between the previous sample and the hit (0..1);
    # at k = 0 the span is 0 and the ray takes the first sample.
    span = s_hit - s_prev
    f = (tan_el - s_prev) / np.maximum(span, 1e-12)
    f += (span <= 1e-12)
    np.clip(f, 0.0, 1.0, out=f)
    t_prev = np.take(t, kp)
    dist = t_prev + (np.take(t, k) - t_prev) * f  # (r, A) metres along the ground-plane direction
    col_flat = col.reshape(-1, 3)
    c = np.take(col_flat, idxp, axis=0)
    c += (np.take(col_flat, idx, axis=0) - c) * f[..., None]
    near_rows = np.any(dist < cfg.detail_fade_m, axis=1)
    if near_rows.any():
        lo = int(np.argmax(near_rows))
        hi = rows - int(np.argmax(near_rows[::-1]))
        _add_detail(scene, cfg, c[lo:hi], dist[lo:hi], cam_xz, sin_az, cos_az)
    np.copyto(out[:rows], c, where=ground[..., None])
    if depth is not None:
        cos_el = np.cos(el).astype(np.float32)[:, None]
        depth[:rows] = np.where(ground, dist / np.maximum(cos_el, 1e-6), np.inf)


def _add_detail(scene: Scene, cfg: RenderConfig, c: np.ndarray, dist: np.ndarray,
                cam_xz: tuple[float, float], sin_az: np.ndarray, cos_az: np.ndarray) -> None:
    """Modulate close ground by a fine brightness texture that fades with distance, in place.

    c: (r, A, 3) colours of a band of rows, dist: (r, A) their ground distances.
    """
    terrain = scene.terrain
    detail = terrain.detail.reshape(-1)
    m = terrain.detail.shape[0]
    inv = np.float32(1.0 / terrain.config.detail_cell_m)
    d = np.minimum(dist, cfg.detail_fade_m) * inv
    u = np.floor(np.float32(cam_xz[0] * inv) + d * sin_az[None]).astype(np.int32) & (m - 1)
    v = np.floor(np.float32(cam_xz[1] * inv) + d * cos_az[None]).astype(np.int32) & (m - 1)
    fade = np.maximum(1.0 - dist * np.float32(1.0 / cfg.detail_fade_m), 0.0)
    gain = 1.0 + (np.take(detail, v * m + u) - 1.0) * fade
    c *= gain[..., None]


def _to_pixels(out: np.ndarray, pixel_cell: np.ndarray, height: int, width: int) -> np.ndarray:
    """Quantise the cell colours and copy each pixel's cell; (H, W, 3) uint8."""
    n_el, n_az, _ = out.shape
    packed = np.empty((n_el, n_az, 4), np.uint8)
    np.clip(out * 255.0 + 0.5, 0.0, 255.0, out=out)
    packed[..., :3] = out
    words = packed.view(np.uint32).reshape(-1)  # one gather moves a whole RGBX pixel
    px = np.take(words, pixel_cell)
    rgbx = Image.frombuffer("RGBX", (width, height), px, "raw", "RGBX", 0, 1)
    return np.asarray(rgbx.convert("RGB"))  # PIL drops the pad byte faster than a strided copy


def render_frame(scene: Scene, pose: np.ndarray, width: int, height: int,
                 config: RenderConfig | None = None) -> np.ndarray:
    """(H, W, 3) uint8 frame of `scene` from `pose` (builds a fresh Camera; engines keep theirs)."""
    return render_view(scene, Camera(width, height), pose, config=config).rgb

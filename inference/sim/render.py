"""Render one sim frame: march the terrain, shade ground, water and sky per grid cell, warp to pixels.

The frame is computed on an (elevation, azimuth) grid (camera.RayGrid) and
each pixel copies the cell of its exact ray, so the picture is right for
any yaw and pitch, including views straight up or down. See march.py for
how each cell finds the terrain it sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .camera import Camera, CameraPose, RayGrid, decompose_pose
from .fastmath import power
from .march import GroundSamples, MarchConfig, march
from .scene import Scene
from .sky import haze_colour, rgb, sky_colour, sun_angles


BAND_ROWS = 32  # ground grid rows shaded at once: the temporaries stay in a core's L2 cache


@dataclass(kw_only=True)
class RenderConfig:
    """World scale and detail."""

    metres_per_unit: float = 1.6  # pose units to metres: 0.05 per frame at 16 fps walks at 1.3 m/s
    eye_height_m: float = 1.7  # eye above the ground (or water) under the camera
    detail_fade_m: float = 45.0  # close-up ground texture fades out by this distance
    march: MarchConfig = field(default_factory=MarchConfig)  # terrain sampling


@dataclass(kw_only=True)
class View:
    """A rendered frame and, on request, its per-pixel depth."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray | None = None  # (H, W) float32 metres along the ray, inf for sky
    eye: tuple[float, float, float] = (0.0, 0.0, 0.0)  # camera (x, height, z) in world metres


@dataclass(kw_only=True)
class _Frame:
    """Per-frame quantities shared by the shading steps."""

    scene: Scene
    cfg: RenderConfig
    grid: RayGrid
    x: float  # eye position in tile metres
    z: float
    eye: float  # eye height in metres
    el: np.ndarray  # (R,) row elevations
    world_az: np.ndarray  # (A,) column azimuths
    sin_az: np.ndarray  # (A,)
    cos_az: np.ndarray  # (A,)
    cos_daz: np.ndarray  # (A,) cos(azimuth - sun azimuth)


def eye_position(scene: Scene, pose: np.ndarray,
                 cfg: RenderConfig) -> tuple[CameraPose, float, float, float]:
    """(pose decomposition, tile x, eye height, tile z) in metres; the eye rides the ground.

    The pose's y is an offset from the eye's resting height above the terrain (or water)
    under the camera, so walking forward climbs hills.
    """
    cp = decompose_pose(pose)
    land = scene.ground
    mx, mz = cp.x * cfg.metres_per_unit, cp.z * cfg.metres_per_unit
    ground = max(land.ground_height(mx, mz), scene.water_level)
    eye = ground + cfg.eye_height_m - cp.y * cfg.metres_per_unit
    period = land.config.size * land.config.cell_m
    return cp, (mx + land.origin[0]) % period, eye, (mz + land.origin[1]) % period


def render_view(scene: Scene, camera: Camera, pose: np.ndarray, *, with_depth: bool = False,
                config: RenderConfig | None = None) -> View:
    """Render the frame seen from a camera-to-world pose (OpenCV axes: x right, y down, z forward)."""
    cfg = config or RenderConfig()
    cp, x, eye, z = eye_position(scene, pose, cfg)
    grid = camera.grid(cp.pitch)
    world_az = (cp.yaw + grid.az0 + grid.daz * np.arange(grid.n_az)).astype(np.float32)
    el = np.clip(grid.el0 + grid.del_ * np.arange(grid.n_el), -1.5707, 1.5707)
    fr = _Frame(scene=scene, cfg=cfg, grid=grid, x=x, z=z, eye=eye, el=el, world_az=world_az,
                sin_az=np.sin(world_az), cos_az=np.cos(world_az),
                cos_daz=np.cos(world_az - sun_angles(scene)[0]).astype(np.float32))
    haze = haze_colour(scene, fr.cos_daz)  # (3, A)
    ground = march(scene, cfg.march, grid, x, z, eye, fr.sin_az, fr.cos_az, haze)
    k_count = ground.t.shape[0]
    has_ground = np.any(ground.hit < k_count, axis=1)  # (R,) rows that see ground somewhere
    has_sky = np.any(ground.hit >= k_count, axis=1)
    ground_rows = grid.n_el - int(np.argmax(has_ground[::-1])) if has_ground.any() else 0
    sky_from = int(np.argmax(has_sky)) if has_sky.any() else grid.n_el
    out = np.empty((3, grid.n_el, grid.n_az), np.float32)
    depth = np.full((grid.n_el, grid.n_az), np.inf, np.float32) if with_depth else None
    if sky_from < grid.n_el:
        _fill_sky(fr, out, sky_from)
    below_sky = min(sky_from, ground_rows)  # rows without sky anywhere: all ground
    for lo in range(0, ground_rows, BAND_ROWS):
        hi = min(lo + BAND_ROWS, ground_rows)
        colour, dist = _shade_ground(fr, ground, haze, lo, hi)
        seen = ground.hit[lo:hi] < k_count
        split = min(max(below_sky - lo, 0), hi - lo)
        out[:, lo:lo + split] = colour[:, :split]
        np.copyto(out[:, lo + split:hi], colour[:, split:], where=seen[split:])
        if depth is not None:
            ray = dist / np.maximum(np.cos(el[lo:hi]), 1e-6).astype(np.float32)[:, None]
            depth[lo:hi] = np.where(seen, ray, np.inf)
    rgb = _to_pixels(out, grid.pixel_cell, camera.height, camera.width)
    depth_px = None
    if depth is not None:
        depth_px = np.take(depth.reshape(-1), grid.pixel_cell).reshape(camera.height, camera.width)
    return View(rgb=rgb, depth=depth_px, eye=(x, eye, z))


def _fill_sky(fr: _Frame, out: np.ndarray, sky_from: int) -> None:
    """Sky colours for rows sky_from.. of `out`, computed on every other row and column.

    The sky is smooth (gradient, glow, soft clouds), so half resolution is invisible
    after JPEG and saves three quarters of its cost.
    """
    rows = fr.el[sky_from::2]
    half = sky_colour(fr.scene, np.sin(rows).astype(np.float32), np.cos(rows).astype(np.float32),
                      fr.world_az[::2], (fr.x, fr.z))  # (3, ceil(r/2), ceil(A/2))
    n_rows, n_az = out.shape[1] - sky_from, out.shape[2]
    full = np.repeat(np.repeat(half, 2, axis=1)[:, :n_rows], 2, axis=2)[:, :, :n_az]
    out[:, sky_from:] = full


def _shade_ground(fr: _Frame, ground: GroundSamples, haze: np.ndarray,
                  lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour (3, r, A) and horizontal distance (r, A) of the ground in grid rows lo..hi-1."""
    t = ground.t
    k_count, n_az = ground.packed.shape[1:]
    k = np.minimum(ground.hit[lo:hi], k_count - 1).astype(np.int32)
    kp = np.maximum(k - 1, 0)
    cols = np.arange(n_az, dtype=np.int32)[None]
    flat = ground.packed.reshape(5, -1)
    hit = np.take(flat, k * n_az + cols, axis=1)  # (5, r, A)
    prev = np.take(flat, kp * n_az + cols, axis=1)
    s_prev = prev[0]
    tan_el = np.tan(fr.el[lo:hi]).astype(np.float32)[:, None]  # (r, 1)
    # Where the ray crosses the straight segment from the previous sample to the hit (0..1);
    # at k = 0 the span is 0 and the ray takes the first sample.
    span = hit[0] - s_prev
    f = (tan_el - s_prev) / np.maximum(span, 1e-12)
    f += span <= 1e-12
    np.clip(f, 0.0, 1.0, out=f)
    t_prev = np.take(t, kp)
    dist = t_prev + (np.take(t, k) - t_prev) * f  # (r, A) metres
    # Rays steeper than the first sample meet the ground before it: take the ground as
    # level at that sample's height there, so looking straight down stays sharp.
    first = k == 0
    if first.any():
        ratio = np.clip(hit[0] / np.minimum(tan_el, -1e-6), 0.0, 1.0)
        dist = np.where(first, t[0] * ratio, dist)
    prev += (hit - prev) * f  # interpolated haze and colour
    colour = prev[2:]
    near_rows = np.nonzero(np.any(dist < fr.cfg.detail_fade_m, axis=1))[0]
    if near_rows.size:
        a, b = int(near_rows[0]), int(near_rows[-1]) + 1
        _add_detail(fr, colour[:, a:b], dist[a:b])
    ray_h = np.float32(fr.eye) + tan_el * dist  # height where the ray meets the ground
    _add_water(fr, prev, ray_h, haze, lo)
    return colour, dist


def _add_water(fr: _Frame, cells: np.ndarray, ray_h: np.ndarray, haze: np.ndarray, row0: int) -> None:
    """Sky reflection and sun glitter on cells whose ray meets the water, in place.

    cells: (5, r, A) interpolated samples (s, haze, r, g, b) of grid rows row0..; ray_h: (r, A)
    height where each ray meets the ground. Wetness comes from that exact height, so
    shorelines are continuous between march samples. Works on the band of rows holding
    water; per-row terms (mirror angle, Fresnel) broadcast along the row.
    """
    scene = fr.scene
    look = scene.look
    wl = np.float32(scene.water_level + 0.15)
    wet_rows = np.nonzero(np.any(ray_h < wl, axis=1))[0]
    if wet_rows.size == 0:
        return
    lo, hi = int(wet_rows[0]), int(wet_rows[-1]) + 1
    band = cells[:, lo:hi]
    wet = np.clip((wl - ray_h[lo:hi]) * 6.0, 0.0, 1.0)  # (b, A)
    sin_down = np.maximum(-np.sin(fr.el[row0 + lo:row0 + hi]), 0.0).astype(np.float32)[:, None]  # (b, 1)
    fresnel = 0.03 + 0.97 * power(1.0 - sin_down, 5)
    up = np.sqrt(sin_down)  # (b, 1)
    sky = rgb(look.sky_horizon) * (1 - up) + rgb(look.sky_zenith) * up  # (3, b, 1) in the mirror
    _, sin_s, cos_s = sun_angles(scene)
    cos_g = np.sqrt(1.0 - sin_down * sin_down) * (cos_s * fr.cos_daz)[None] + sin_down * sin_s
    cos_g = np.maximum(cos_g, 0.0) * _ripples(fr, row0 + lo, row0 + hi)
    g12 = power(cos_g, 12)
    glitter = (power(g12, 10) * 3.0 + g12 * 0.3) * look.sun_strength
    refl = sky + rgb(look.sun_colour) * glitter  # (3, b, A)
    refl += (haze[:, None, :] - refl) * band[1]
    c = band[2:]
    c += (refl - c) * (fresnel * wet)


def _ripples(fr: _Frame, lo: int, hi: int) -> np.ndarray:
    """(hi - lo, A) factor near 1 that breaks the sun's reflection into sparkles."""
    detail = fr.scene.ground.detail
    m = detail.shape[0]
    row = (np.arange(lo, hi) * 7) % m
    az_bin = np.floor(fr.world_az * 900.0).astype(np.int32) % m
    return 0.97 + 0.03 * np.take(detail.reshape(-1), row[:, None] * m + az_bin[None])


def _add_detail(fr: _Frame, colour: np.ndarray, dist: np.ndarray) -> None:
    """Modulate close ground by a fine brightness texture that fades with distance, in place.

    colour: (3, r, A) a band of rows; dist: (r, A) their horizontal distances.
    """
    land = fr.scene.ground
    detail = land.detail.reshape(-1)
    m = land.detail.shape[0]
    fade_m = fr.cfg.detail_fade_m
    inv = np.float32(1.0 / land.config.detail_cell_m)
    d = np.minimum(dist, fade_m) * inv
    u = np.float32(fr.x * inv) + d * fr.sin_az[None]  # (r, A) detail texels
    v = np.float32(fr.z * inv) + d * fr.cos_az[None]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    iu, iv = u0.astype(np.int32) & (m - 1), v0.astype(np.int32) & (m - 1)
    iu1 = (iu + 1) & (m - 1)
    r0, r1 = iv * m, ((iv + 1) & (m - 1)) * m
    top = np.take(detail, r0 + iu)
    top += (np.take(detail, r0 + iu1) - top) * fu
    bot = np.take(detail, r1 + iu)
    bot += (np.take(detail, r1 + iu1) - bot) * fu
    top += (bot - top) * fv
    fade = np.maximum(1.0 - dist * np.float32(1.0 / fade_m), 0.0)
    top -= 1.0
    top *= fade
    top += 1.0
    colour *= top


def _to_pixels(out: np.ndarray, pixel_cell: np.ndarray, height: int, width: int) -> np.ndarray:
    """Quantise the (3, R, A) cell colours and copy each pixel's cell; (H, W, 3) uint8."""
    out *= 255.0
    out += 0.5
    np.minimum(out, 255.0, out=out)
    np.maximum(out, 0.0, out=out)
    q = out.astype(np.uint32)
    words = q[0] | (q[1] << 8) | (q[2] << 16)  # (R, A) RGBX, little-endian byte order
    px = np.take(words.reshape(-1), pixel_cell)  # one gather moves a whole pixel
    rgbx = Image.frombuffer("RGBX", (width, height), px, "raw", "RGBX", 0, 1)
    return np.asarray(rgbx.convert("RGB"))  # PIL drops the pad byte faster than a strided copy


def render_frame(scene: Scene, pose: np.ndarray, width: int, height: int,
                 config: RenderConfig | None = None) -> np.ndarray:
    """(H, W, 3) uint8 frame of `scene` from `pose` (builds a fresh Camera; engines keep theirs)."""
    return render_view(scene, Camera(width, height), pose, config=config).rgb

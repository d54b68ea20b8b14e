"""Render one sim frame: march the terrain, shade ground, water and sky per grid cell, warp to pixels.

The frame is computed on an (elevation, azimuth) grid (camera.RayGrid) and
each pixel copies the cell of its exact ray, so the picture is right for
any yaw and pitch, including views straight up or down. See march.py for
how each cell finds the terrain it sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .camera import Camera, CameraPose, RayGrid, decompose_pose
from .fastmath import power
from .kernels import cells_to_pixels, shade_columns
from .look import Look
from .march import MarchConfig, march, row_bounds
from .scene import Scene
from .sky import haze_colour, rgb, sky_colour, sun_angles
from .terrain import Ground, TerrainConfig


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


@dataclass(kw_only=True)
class RowTerms:
    """Per-row quantities of a ray grid: the same for every frame rendered at its pitch."""

    el: np.ndarray  # (R,) float64 row elevations, clipped short of the poles
    tan_el: np.ndarray  # (R,) float32
    cos_el: np.ndarray  # (R,) float32, at least 1e-6 (ray length from horizontal distance)
    bounds: np.ndarray  # (R,) float64 march.row_bounds
    water: np.ndarray  # (R, 3) float32 looking down: sin, Fresnel reflectance, cos
    up: np.ndarray  # (1, R) float32 sqrt(sin looking down): mirrored sky from horizon to zenith


def row_terms(grid: RayGrid) -> RowTerms:
    """The grid's RowTerms, derived on first use and kept with it."""
    if grid.rows is None:
        el = np.clip(grid.el0 + grid.del_ * np.arange(grid.n_el), -1.5707, 1.5707)
        sin_down = np.maximum(-np.sin(el), 0.0).astype(np.float32)
        water = np.stack([sin_down, 0.03 + 0.97 * power(1.0 - sin_down, 5),
                          np.sqrt(1.0 - sin_down * sin_down)], axis=1).astype(np.float32)
        grid.rows = RowTerms(el=el, tan_el=np.tan(el).astype(np.float32),
                             cos_el=np.maximum(np.cos(el), 1e-6).astype(np.float32), bounds=row_bounds(grid),
                             water=water, up=np.sqrt(sin_down)[None])
    return grid.rows


def render_view(scene: Scene, camera: Camera, pose: np.ndarray, *, with_depth: bool = False,
                config: RenderConfig | None = None) -> View:
    """Render the frame seen from a camera-to-world pose (OpenCV axes: x right, y down, z forward)."""
    cfg = config or RenderConfig()
    cp, x, eye, z = eye_position(scene, pose, cfg)
    grid = camera.grid(cp.pitch)
    rows = row_terms(grid)
    world_az = (cp.yaw + grid.az0 + grid.daz * np.arange(grid.n_az)).astype(np.float32)
    sin_az, cos_az = np.sin(world_az), np.cos(world_az)
    cos_daz = np.cos(world_az - sun_angles(scene)[0]).astype(np.float32)
    haze = haze_colour(scene, cos_daz)  # (3, A)
    ground = march(scene, cfg.march, rows.bounds, x, z, eye, sin_az, cos_az, haze)
    sky_from = int(ground.sky_row.min())
    words = np.empty((grid.n_el, grid.n_az), np.uint32)  # RGBX per cell
    depth = np.empty((grid.n_el, grid.n_az) if with_depth else (1, 1), np.float32)
    land = scene.ground
    m = land.detail.shape[0]
    inv = np.float32(1.0 / land.config.detail_cell_m)
    water, row_water, col_water, ripple_bin = _water_terms(scene, rows, cos_daz, world_az, m)
    shade_columns(ground.packed, ground.hit, ground.t, rows.tan_el,
                  _sky_half(scene, rows.el, world_az, sky_from, (x, z)), sky_from, land.detail.reshape(-1), m,
                  float(eye), np.float32(x * inv), np.float32(z * inv), inv, float(cfg.detail_fade_m),
                  sin_az, cos_az, water, row_water, col_water, ripple_bin, haze, words, depth, rows.cos_el)
    rgb = np.empty((camera.height, camera.width, 3), np.uint8)
    cells_to_pixels(words, grid.pixel_cell, rgb.reshape(-1))
    depth_px = None
    if with_depth:
        depth_px = np.take(depth.reshape(-1), grid.pixel_cell).reshape(camera.height, camera.width)
    return View(rgb=rgb, depth=depth_px, eye=(x, eye, z))


def _sky_half(scene: Scene, el: np.ndarray, world_az: np.ndarray, sky_from: int,
              cam_xz: tuple[float, float]) -> np.ndarray:
    """Sky colours (3, r, a) of rows sky_from, sky_from + 2, ... and every other column.

    The sky is smooth (gradient, glow, soft clouds), so half resolution is invisible
    after JPEG and saves three quarters of its cost; each cell takes its pair's colour.
    """
    if sky_from >= el.shape[0]:
        return np.zeros((3, 1, 1), np.float32)
    rows = el[sky_from::2]
    return sky_colour(scene, np.sin(rows).astype(np.float32), np.cos(rows).astype(np.float32),
                      world_az[::2], cam_xz)


def _water_terms(scene: Scene, rows: RowTerms, cos_daz: np.ndarray, world_az: np.ndarray,
                 m: int) -> tuple[np.ndarray, ...]:
    """Per-frame, per-row and per-column terms of the water reflection (see kernels.shade_columns)."""
    look = scene.look
    _, sin_s, cos_s = sun_angles(scene)
    water = np.array([scene.water_level + 0.15, sin_s, look.sun_strength, *look.sun_colour], np.float32)
    mirror = rgb(look.sky_horizon, 2) * (1 - rows.up) + rgb(look.sky_zenith, 2) * rows.up  # (3, R) sky seen
    row_water = np.concatenate([rows.water, mirror.T], axis=1)  # (R, 6)
    ripple_bin = np.floor(world_az * 900.0).astype(np.int32) % m  # breaks the sun's glitter into sparkles
    return water, row_water, (np.float32(cos_s) * cos_daz).astype(np.float32), ripple_bin.astype(np.int64)


def render_frame(scene: Scene, pose: np.ndarray, width: int, height: int,
                 config: RenderConfig | None = None) -> np.ndarray:
    """(H, W, 3) uint8 frame of `scene` from `pose` (builds a fresh Camera; engines keep theirs)."""
    return render_view(scene, Camera(width, height), pose, config=config).rgb


def warm_up_kernels() -> None:
    """Compile the renderer's loops (or load them from numba's cache) for scenes painted in this
    process and for scenes mapped read-only from shared memory, so no frame waits for a compiler."""
    for read_only in (False, True):
        render_view(_tiny_scene(read_only), Camera(16, 16), np.eye(4))


def _tiny_scene(read_only: bool) -> Scene:
    """A flat 16-texel world with two mip levels: exercises every loop in a fraction of a millisecond."""
    n = 16
    config = TerrainConfig(size=n, detail_size=n, cloud_size=n)
    arrays = [np.ones((n, n), np.float32), np.ones((n, n), np.float32),  # smooth height, detail
              np.full((n * n + n * n // 4, 4), 0.5, np.float32), np.full((n, n), 0.5, np.float32)]  # texels, cloud
    for a in arrays:
        a.flags.writeable = not read_only
    smooth, detail, texels, cloud = arrays
    ground = Ground(config=config, origin=(0.0, 0.0), smooth=smooth, detail=detail)
    levels = [(0, n, config.cell_m), (n * n, n // 2, 2 * config.cell_m)]
    return Scene.from_parts(look=Look(), ground=ground, texels=texels, levels=levels, cloud=cloud)

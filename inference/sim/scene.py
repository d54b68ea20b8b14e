"""A terrain painted and lit for one look: the textures and constants the renderer samples."""

from __future__ import annotations

import math
from collections.abc import Generator

import numpy as np

from .look import Look
from .noise import finish, smoothstep, upsample
from .terrain import Ground, Terrain

SHADOW_STEPS = 48  # texels of the shadow grid searched toward the sun
SHADOW_SCALE = 4  # the shadow grid is this many times coarser than the height field


def _rgb(c) -> np.ndarray:
    return np.asarray(c, np.float32).reshape(3, 1, 1)


def _mix(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    return a + (b - a) * w


def _downsample(a: np.ndarray) -> np.ndarray:
    """2x2 mean of a (c, n, n) array."""
    return 0.25 * (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2])


class Scene:
    """Lit colour + height texels with mip levels, sun direction, cloud cover, water level.

    Channels are display RGB in [0, 1] (before haze), stored channel-first.
    `Scene(terrain, look)` paints at once; `Scene.in_slices(terrain, look)` paints the
    same texels in slices of a few tens of milliseconds; `Scene.from_parts` wraps
    arrays painted elsewhere (a render worker's shared copy), without the terrain.
    """

    terrain: Terrain | None  # None for a scene rebuilt from its parts

    def __init__(self, terrain: Terrain, look: Look, *, levels: int = 6):
        finish(self._paint_all(terrain, look, levels))

    @classmethod
    def in_slices(cls, terrain: Terrain, look: Look, *, levels: int = 6) -> Generator[None, None, "Scene"]:
        """Paint the scene, yielding between slices; returns it (StopIteration.value)."""
        scene = cls.__new__(cls)
        yield from scene._paint_all(terrain, look, levels)
        return scene

    @classmethod
    def from_parts(cls, *, look: Look, ground: Ground, texels: np.ndarray, levels: list,
                   cloud: np.ndarray) -> "Scene":
        """A scene over already painted arrays (see the attributes set in _paint_all)."""
        scene = cls.__new__(cls)
        scene._set_look(look)
        scene.terrain, scene.ground = None, ground
        scene.texels, scene.levels, scene.cloud = texels, [tuple(lv) for lv in levels], cloud
        return scene

    def _set_look(self, look: Look) -> None:
        self.look = look
        az, el = math.radians(look.sun_azimuth_deg), math.radians(look.sun_elevation_deg)
        # Sun direction in world (x, up, z).
        self.sun_dir = np.array([math.cos(el) * math.sin(az), math.sin(el),
                                 math.cos(el) * math.cos(az)], np.float32)
        self.water_level = float(look.water_level_m)

    def _paint_all(self, terrain: Terrain, look: Look, levels: int) -> Generator[None, None, None]:
        self.terrain, self.ground = terrain, terrain.ground
        self._set_look(look)
        level0 = yield from self._paint(terrain, look)  # (4, n, n): height, r, g, b
        yield
        self.levels = []  # (first texel, texels per side, metres per texel)
        mips, offset, cur = [], 0, level0
        for lvl in range(levels):
            n = cur.shape[1]
            self.levels.append((offset, n, terrain.config.cell_m * 2 ** lvl))
            mips.append(cur.reshape(4, -1))
            offset += n * n
            if n <= 8:
                break
            cur = _downsample(cur)
        # (sum n^2, 4) float32, texel-major: a bilinear tap of the march reads one 16-byte texel.
        self.texels = np.ascontiguousarray(np.concatenate(mips, axis=1).T)
        self.cloud = smoothstep(1.0 - look.cloud_cover - 0.08, 1.0 - look.cloud_cover + 0.12,
                                terrain.cloud).astype(np.float32)  # (m, m) coverage 0..1

    def _paint(self, terrain: Terrain, look: Look) -> Generator[None, None, np.ndarray]:
        h = terrain.height
        ny = terrain.normal[1]
        slope = 1.0 - ny
        wl = self.water_level
        patch, speck = terrain.patch, terrain.speckle
        grass = _mix(_rgb(look.grass), _rgb(look.grass_dry), smoothstep(0.45, 0.7, patch))
        grass = grass * (0.85 + 0.3 * speck)
        forest_edge = 0.66 - 0.42 * look.forest_amount
        forest = smoothstep(forest_edge, forest_edge + 0.04, patch + 0.15 * (speck - 0.5))
        forest *= smoothstep(0.35, 0.2, slope) * smoothstep(wl + 0.5, wl + 3.0, h)
        forest *= smoothstep(190.0 + 200 * look.sand_amount, 140.0, h)
        crowns = 0.35 + 1.4 * (terrain.crowns - 0.5) * 2.2 + 0.6 * speck
        ground = _mix(grass, _rgb(look.forest) * np.maximum(crowns, 0.25), forest)
        yield
        sand = _rgb(look.sand) * (0.92 + 0.16 * speck)
        ground = _mix(ground, sand, np.float32(look.sand_amount))
        beach = smoothstep(wl + 1.8 + 2.0 * patch, wl + 0.3, h) * smoothstep(0.12, 0.04, slope)
        ground = _mix(ground, sand, beach)
        yield
        rock = _rgb(look.rock) * (0.75 + 0.5 * speck)
        steep = smoothstep(0.28, 0.45, slope + 0.1 * (speck - 0.5))
        steep = np.maximum(steep, smoothstep(200.0, 300.0, h + 60 * patch) * (1 - look.sand_amount))
        ground = _mix(ground, rock, steep)
        yield
        snow_line = 260.0 - 330.0 * look.snow_amount
        snow = smoothstep(snow_line, snow_line + 25.0, h + 60.0 * (patch - 0.5))
        snow *= smoothstep(0.5, 0.3, slope) * smoothstep(wl, wl + 0.6, h)
        ground = _mix(ground, _rgb(look.snow) * (0.95 + 0.05 * speck), snow)
        yield
        shadow = yield from self._shadow(terrain)
        light = self._light(terrain, look, shadow)  # (3, n, n)
        lit = ground * light
        yield
        water = h < wl
        depth = np.clip((wl - h) / 12.0, 0.0, 1.0)
        body = _mix(_rgb(look.water_colour) * 1.5, _rgb(look.water_colour), depth)
        amb = _rgb(look.ambient)
        lit = np.where(water[None], body * (0.6 * amb + 0.4), lit)
        out = np.empty((4,) + h.shape, np.float32)
        out[0] = np.maximum(h, wl)
        out[1:] = lit
        return out

    def _light(self, terrain: Terrain, look: Look, shadow: np.ndarray) -> np.ndarray:
        """Direct sun (with cast shadows) plus sky light on every texel; (3, n, n)."""
        nx, ny, nz = terrain.normal
        sx, sy, sz = self.sun_dir
        direct = np.maximum(nx * sx + ny * sy + nz * sz, 0.0) * shadow
        occlusion = np.clip(1.0 + 1.5 * terrain.cavity, 0.55, 1.15)
        sky = (0.55 + 0.45 * ny) * occlusion
        return (_rgb(look.sun_colour) * look.sun_strength * direct
                + _rgb(look.ambient) * sky)

    def _shadow(self, terrain: Terrain) -> Generator[None, None, np.ndarray]:
        """1 where the sun is visible, 0 in cast shadow (soft-edged); (n, n)."""
        n = terrain.config.size
        m = n // SHADOW_SCALE
        h = terrain.height.reshape(m, SHADOW_SCALE, m, SHADOW_SCALE).max(axis=(1, 3))
        cell = terrain.config.cell_m * SHADOW_SCALE
        sx, sy, sz = self.sun_dir
        horiz = math.hypot(sx, sz)
        if horiz < 1e-4:
            return np.ones((n, n), np.float32)
        tan_el = sy / horiz
        dx, dz = sx / horiz, sz / horiz
        excess = np.full((m, m), -1.0, np.float32)
        for step in range(1, SHADOW_STEPS + 1):
            ox, oz = int(round(dx * step)), int(round(dz * step))
            ahead = np.roll(h, (-oz, -ox), axis=(0, 1))
            dist = cell * math.hypot(ox, oz)
            np.maximum(excess, (ahead - h - 4.0) / dist - tan_el, out=excess)
            if step % 16 == 0:
                yield
        lit = smoothstep(0.06, 0.0, excess)
        return np.clip(upsample(lit.astype(np.float32), n), 0.0, 1.0)

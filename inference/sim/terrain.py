"""A seed's landscape: a periodic height field with the fields its look is painted from."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from .noise import fbm, fbm_slices, finish, ridged_slices, smoothstep, value_noise

# Water never rises above this height in any look, so the spawn point stays dry.
MAX_WATER_LEVEL_M = 14.0


@dataclass(kw_only=True)
class TerrainConfig:
    """Size and shape of the generated land."""

    size: int = 1024  # texels per side of the periodic tile (power of two)
    cell_m: float = 4.0  # metres per texel; the world repeats every size*cell_m metres
    hill_m: float = 110.0  # height range of the rolling hills
    mountain_m: float = 420.0  # height of the ridged mountains where the range mask is high
    detail_size: int = 1024  # texels per side of the near-ground detail texture
    detail_cell_m: float = 0.04  # metres per detail texel (grass tufts, pebbles)
    cloud_size: int = 256  # texels per side of the cloud-cover texture
    cloud_cell_m: float = 40.0  # metres per cloud texel on the cloud layer


def box_blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Periodic separable box blur of a square field (running sums over a wrapped copy)."""
    out = a.astype(np.float64)
    width = 2 * radius + 1
    for axis in (0, 1):
        n = out.shape[axis]
        padded = np.concatenate([np.take(out, range(n - radius - 1, n), axis=axis), out,
                                 np.take(out, range(radius), axis=axis)], axis=axis)
        sums = np.cumsum(padded, axis=axis)
        out = (np.take(sums, range(width, width + n), axis=axis)
               - np.take(sums, range(0, n), axis=axis)) / width
    return out.astype(np.float32)


@dataclass(kw_only=True)
class Ground:
    """The part of a terrain the renderer reads: walkable height, close-up texture, spawn offset."""

    config: TerrainConfig
    origin: tuple[float, float]  # (x, z) metres of the world origin in the tile
    smooth: np.ndarray  # (n, n) float32 slightly smoothed height the camera walks on
    detail: np.ndarray  # (d, d) float32 brightness multiplier around 1 for close ground

    def ground_height(self, x_m: float, z_m: float) -> float:
        """Height in metres of the (slightly smoothed) ground at world position (x, z)."""
        cfg = self.config
        n = cfg.size
        u = (x_m + self.origin[0]) / cfg.cell_m
        v = (z_m + self.origin[1]) / cfg.cell_m
        u0, v0 = int(np.floor(u)), int(np.floor(v))
        fu, fv = u - u0, v - v0
        s = self.smooth
        h00 = s[v0 % n, u0 % n]
        h01 = s[v0 % n, (u0 + 1) % n]
        h10 = s[(v0 + 1) % n, u0 % n]
        h11 = s[(v0 + 1) % n, (u0 + 1) % n]
        return float((h00 * (1 - fu) + h01 * fu) * (1 - fv) + (h10 * (1 - fu) + h11 * fu) * fv)


class Terrain:
    """Height (metres), normals, material noise and the spawn point of one seed's world.

    Texel (row, col) covers world z = row*cell_m, x = col*cell_m; the tile repeats.
    `Terrain(seed)` builds it at once; `Terrain.in_slices(seed)` builds the same
    fields in slices of a few tens of milliseconds (a generator whose return value
    is the terrain), so an engine can interleave the build with its frames.
    """

    def __init__(self, seed: int, config: TerrainConfig | None = None):
        self._prepare(seed, config)
        finish(self._build())

    @classmethod
    def in_slices(cls, seed: int, config: TerrainConfig | None = None) -> Generator[None, None, "Terrain"]:
        """Build the terrain, yielding between slices; returns it (StopIteration.value)."""
        terrain = cls.__new__(cls)
        terrain._prepare(seed, config)
        yield from terrain._build()
        return terrain

    def _prepare(self, seed: int, config: TerrainConfig | None) -> None:
        self.seed = int(seed)
        self.config = config or TerrainConfig()
        if self.config.size & (self.config.size - 1):
            raise ValueError(f"terrain size {self.config.size} is not a power of two")

    def _stream(self, tag: int) -> np.random.Generator:
        """One random stream per field, so changing how one is made leaves the others alone."""
        return np.random.default_rng([self.seed, 0x51A, tag])

    def _build(self) -> Generator[None, None, None]:
        cfg = self.config
        n = cfg.size
        self.height = yield from self._shape_height(self._stream(0), n)  # (n, n) metres
        yield
        self.normal = self._normals(self.height, cfg.cell_m)  # (3, n, n) x, y(up), z
        self._smooth = box_blur(self.height, 1)  # ground the camera walks on
        yield
        self.cavity = np.clip((self.height - box_blur(self.height, 4)) * 0.08, -1, 1)
        yield
        self.patch = yield from fbm_slices(self._stream(1), n, 16, 5)  # meadow/forest patches
        self.speckle = yield from fbm_slices(self._stream(2), n, 128, 3)  # small-scale colour variation
        self.detail = self._detail(self._stream(3), cfg.detail_size)
        yield
        self.cloud = fbm(self._stream(4), cfg.cloud_size, 4, 5)
        self.origin = self._spawn_point(self._stream(5))  # (x, z) metres of the world origin
        yield
        # One random brightness per texel: tree crowns catching or missing the light.
        self.crowns = box_blur(self._stream(6).random((n, n), dtype=np.float32), 1)
        self.ground = Ground(config=cfg, origin=self.origin, smooth=self._smooth, detail=self.detail)

    def _shape_height(self, rng: np.random.Generator, n: int) -> Generator[None, None, np.ndarray]:
        cfg = self.config
        ranges = smoothstep(0.35, 0.7, (yield from fbm_slices(rng, n, 4, 3)))  # where mountains rise
        hills = yield from fbm_slices(rng, n, 16, 6, gain=0.5)
        mountains = yield from ridged_slices(rng, n, 8, 6, gain=0.55)
        basins = yield from fbm_slices(rng, n, 4, 3)  # broad lowlands that hold lakes
        h = cfg.hill_m * (hills - 0.45) * 1.6
        h += cfg.mountain_m * ranges * np.maximum(mountains, 0.0) ** 1.5
        h += 45.0 * (basins - 0.5) * 2.0
        # Flatten valley floors a little so lakes and meadows have flat shores.
        low = h < 0
        h[low] *= 0.6
        return h.astype(np.float32)

    @staticmethod
    def _normals(h: np.ndarray, cell_m: float) -> np.ndarray:
        dx = (np.roll(h, -1, axis=1) - np.roll(h, 1, axis=1)) / (2 * cell_m)
        dz = (np.roll(h, -1, axis=0) - np.roll(h, 1, axis=0)) / (2 * cell_m)
        inv = 1.0 / np.sqrt(dx * dx + dz * dz + 1.0)
        return np.stack([-dx * inv, inv, -dz * inv]).astype(np.float32)

    @staticmethod
    def _detail(rng: np.random.Generator, n: int) -> np.ndarray:
        """Brightness multiplier around 1 for close-up ground texture; (n, n) float32."""
        fine = rng.random((n, n), dtype=np.float32) - 0.5  # single-texel grain
        small = value_noise(rng, n // 4, n) - 0.5
        mid = value_noise(rng, n // 16, n) - 0.5
        coarse = value_noise(rng, n // 64, n) - 0.5
        return (1.0 + 0.25 * fine + 0.45 * small + 0.35 * mid + 0.3 * coarse).astype(np.float32)

    def ground_height(self, x_m: float, z_m: float) -> float:
        """Height in metres of the (slightly smoothed) ground at world position (x, z)."""
        return self.ground.ground_height(x_m, z_m)

    def _spawn_point(self, rng: np.random.Generator) -> tuple[float, float]:
        """A dry, gently sloped spot looking along +z (the start heading) at hills and water."""
        cfg = self.config
        n = cfg.size
        cand = rng.integers(0, n, size=(768, 2))  # (row, col)
        h0 = self._smooth[cand[:, 0], cand[:, 1]]
        slope = 1.0 - self.normal[1][cand[:, 0], cand[:, 1]]
        ahead_m = np.geomspace(15.0, 1500.0, 40)
        steps = np.round(ahead_m / cfg.cell_m).astype(int)
        rise = np.empty((cand.shape[0], 40), np.float32)
        wet = np.zeros(cand.shape[0], np.float32)
        for side in (-0.3, 0.0, 0.3):  # a cone of headings around +z
            rows = (cand[:, :1] + steps[None]) % n
            cols = (cand[:, 1:2] + np.round(steps * side).astype(int)[None]) % n
            ahead = self._smooth[rows, cols]  # (C, 40)
            r = (ahead - h0[:, None] - 1.7) / ahead_m[None]
            rise = r if side == -0.3 else np.maximum(rise, r)
            wet += (ahead[:, 8:] < 0.0).mean(axis=1)
        near_block = rise[:, ahead_m < 150].max(axis=1)
        relief = rise[:, ahead_m >= 150].max(axis=1)
        score = (-np.abs(relief - 0.1) - 3.0 * np.maximum(near_block - 0.03, 0.0)
                 - 2.0 * slope + 0.4 * np.minimum(wet, 0.6) - 0.002 * np.abs(h0 - 30.0))
        score[(h0 < MAX_WATER_LEVEL_M + 5.0) | (h0 > 160.0)] -= 100.0
        best = int(np.argmax(score))
        return float(cand[best, 1] * cfg.cell_m), float(cand[best, 0] * cfg.cell_m)

"""Seeded, periodic 2-D noise fields (value noise, fBm, ridged) on square grids."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

Slices = Generator[None, None, np.ndarray]  # work that yields between slices, returning an array


def finish(work: Generator):
    """Run sliced work to the end and return its value."""
    while True:
        try:
            next(work)
        except StopIteration as done:
            return done.value


def _catmull_rom_weights(frac: np.ndarray) -> np.ndarray:
    """Cubic Catmull-Rom weights for taps -1, 0, 1, 2 at fractional offset `frac`; (4, n)."""
    f2 = frac * frac
    f3 = f2 * frac
    return np.stack([
        -0.5 * f3 + f2 - 0.5 * frac,
        1.5 * f3 - 2.5 * f2 + 1.0,
        -1.5 * f3 + 2.0 * f2 + 0.5 * frac,
        0.5 * f3 - 0.5 * f2,
    ]).astype(np.float32)


def _upsample_axis(lattice: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Periodic cubic upsampling of `lattice` along `axis` to `size` samples."""
    n = lattice.shape[axis]
    pos = (np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5
    base = np.floor(pos)
    weights = _catmull_rom_weights((pos - base).astype(np.float32))
    base = base.astype(np.int64)
    out = None
    for tap in range(4):
        taps = np.take(lattice, (base + tap - 1) % n, axis=axis)
        shape = [1, 1]
        shape[axis] = size
        term = taps * weights[tap].reshape(shape)
        out = term if out is None else out + term
    return out


def value_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """(size, size) float32 smooth noise in about [0, 1], `cells` lattice cells per period."""
    if size % cells:
        raise ValueError(f"noise lattice of {cells} cells does not divide grid size {size}")
    lattice = rng.random((cells, cells), dtype=np.float32)
    return _upsample_axis(_upsample_axis(lattice, size, 0), size, 1)


def _coarse_size(size: int, cells: int) -> int:
    """Grid size an octave of `cells` lattice cells is evaluated at (coarse octaves are cheap)."""
    return size // 4 if cells * 16 <= size else size


def upsample(field: np.ndarray, size: int) -> np.ndarray:
    """Periodic cubic upsampling of a square field to (size, size)."""
    if field.shape[0] == size:
        return field
    return _upsample_axis(_upsample_axis(field, size, 0), size, 1)


def fbm(rng: np.random.Generator, size: int, first_cells: int, octaves: int,
        gain: float = 0.5) -> np.ndarray:
    """Fractal sum of value noise octaves, normalised to about [0, 1]; (size, size) float32."""
    return finish(fbm_slices(rng, size, first_cells, octaves, gain))


def fbm_slices(rng: np.random.Generator, size: int, first_cells: int, octaves: int,
               gain: float = 0.5) -> Slices:
    """`fbm`, yielding after every full-resolution octave."""
    total = None
    amp, norm, cells = 1.0, 0.0, first_cells
    for _ in range(octaves):
        res = _coarse_size(size, cells)
        layer = amp * value_noise(rng, min(cells, res), res)
        total = layer if total is None else upsample(total, res) + layer
        if res == size:
            yield
        norm += amp
        amp *= gain
        cells *= 2
    yield
    return (upsample(total, size) / norm).astype(np.float32)


def ridged(rng: np.random.Generator, size: int, first_cells: int, octaves: int,
           gain: float = 0.5) -> np.ndarray:
    """Ridged multifractal (sharp crests, each octave weighted by the one before); (size, size) in [0, 1]."""
    return finish(ridged_slices(rng, size, first_cells, octaves, gain))


def ridged_slices(rng: np.random.Generator, size: int, first_cells: int, octaves: int,
                  gain: float = 0.5) -> Slices:
    """`ridged`, yielding after every full-resolution octave."""
    total, weight = None, None
    amp, norm, cells = 1.0, 0.0, first_cells
    for _ in range(octaves):
        res = _coarse_size(size, cells)
        crest = 1.0 - np.abs(2.0 * value_noise(rng, min(cells, res), res) - 1.0)
        crest *= crest
        if weight is not None:
            crest *= upsample(weight, res)
        total = amp * crest if total is None else upsample(total, res) + amp * crest
        weight = np.clip(crest * 2.0, 0.0, 1.0)
        if res == size:
            yield
        norm += amp
        amp *= gain
        cells *= 2
    yield
    return (upsample(total, size) / norm).astype(np.float32)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at edge0 to 1 at edge1 (float32 in, float32 out)."""
    t = np.clip((x - edge0) * np.float32(1.0 / (edge1 - edge0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)

"""Cheap float32 elementwise maths for the renderer (numpy's arctan and pow are slow)."""

from __future__ import annotations

import numpy as np

# Abramowitz & Stegun 4.4.49: atan(x) on [-1, 1] as x * P(x^2), |error| <= 2e-8 rad.
_ATAN_COEFFS = (-0.3333314528, 0.1999355085, -0.1420889944, 0.1065626393,
                -0.0752896400, 0.0429096138, -0.0161657367, 0.0028662257)
_HALF_PI = np.float32(np.pi / 2)


def arctan(x: np.ndarray) -> np.ndarray:
    """Elementwise arctan of a float32 array, accurate to about 1e-7 rad."""
    ax = np.abs(x)
    # Reduce to [0, 1] with atan(a) = pi/2 - atan(1/a); arithmetic selects, no np.where
    # (data-dependent branches make it ten times slower than a multiply).
    outside = (ax > 1.0).astype(np.float32)
    z = np.minimum(ax, 1.0 / np.maximum(ax, np.float32(1e-30)))
    z2 = z * z
    poly = np.full_like(z, _ATAN_COEFFS[-1])
    for c in _ATAN_COEFFS[-2::-1]:
        poly *= z2
        poly += np.float32(c)
    poly *= z2
    poly += 1.0
    poly *= z
    poly += outside * (_HALF_PI - 2.0 * poly)
    return np.copysign(poly, x)


def power(x: np.ndarray, exponent: int) -> np.ndarray:
    """x ** exponent for a non-negative integer exponent by repeated squaring."""
    if exponent < 0:
        raise ValueError(f"exponent must be a non-negative integer, got {exponent}")
    result = None
    base = x
    while exponent:
        if exponent & 1:
            result = base.copy() if result is None else result * base
        exponent >>= 1
        if exponent:
            base = base * base
    return np.ones_like(x) if result is None else result


def arctan2(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Elementwise atan2(y, x) in float32 on top of `arctan` (x = 0 gives +-pi/2)."""
    y = np.asarray(y, np.float32)
    x = np.asarray(x, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = y / x
    ratio = np.nan_to_num(ratio, nan=0.0, posinf=np.inf, neginf=-np.inf)
    angle = arctan(ratio)
    angle += (x < 0).astype(np.float32) * np.copysign(np.float32(np.pi), y)
    return angle

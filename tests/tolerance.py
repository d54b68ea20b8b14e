"""The one tolerance rule for comparing two float computations of the same values (batched vs single, rank vs rank).

Batching sessions, splitting heads or tokens over ranks, another SIMD width
(AVX2, AVX-512), another BLAS blocking or an aligned copy of the weights all
compute the same float sums in another order. Each addition rounds to half
an ulp of its partial sum, and partial sums are bounded by the magnitude of
the values involved, so each rounding is at most eps(dtype) * scale. Over a
sum of n terms the roundings of two orders are independent and random-walk
to about sqrt(n) of that. The tolerance is therefore

    atol = ULPS * eps(dtype) * scale * sqrt(terms)

with `scale` the largest magnitude of the expected values and `terms` the
number of terms in the longest reordered sum feeding a value (for a
network, the terms summed along its path: width times depth; in bfloat16,
where products are summed in float32 and only stored results round to
bfloat16, the bfloat16 roundings along the path: one per layer). There is no
relative part: a small value that came out of a sum of large terms carries
the large terms' rounding (the K cache once differed by 1.03e-6 on a value
of 7e-3 on an AVX-512 machine), so the error follows the scale, not the
value. A real defect (wrong slot, wrong rank's heads, wrong offset) moves
values by a good fraction of the scale, orders of magnitude above this.

Frames quantised to 8 bits from values within that tolerance differ by at
most FRAME_LEVELS level, and only where a value sat next to a rounding
boundary.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ULPS = 4
"""Allowed rounding per reordered sum, in units of eps(dtype) at the value scale."""
FRAME_LEVELS = 1
"""Largest difference of two uint8 frames decoded from values equal within the tolerance."""


def reorder_atol(dtype: torch.dtype | np.dtype, scale: float, terms: int, ulps: float = ULPS) -> float:
    """Absolute tolerance for values of magnitude <= scale whose sums of `terms` terms ran in another order."""
    if terms < 1:
        raise ValueError(f"terms={terms}: a reordered sum has at least one term")
    eps = torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) else float(np.finfo(dtype).eps)
    return ulps * eps * float(scale) * math.sqrt(terms)


def assert_reorder_close(actual, expected, *, terms: int, ulps: float = ULPS, what: str = "values") -> None:
    """Assert |actual - expected| <= reorder_atol(expected's dtype, max|expected|, terms) everywhere."""
    a = torch.as_tensor(np.asarray(actual) if isinstance(actual, np.ndarray) else actual)
    e = torch.as_tensor(np.asarray(expected) if isinstance(expected, np.ndarray) else expected)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    scale = float(e.abs().max()) if e.numel() else 0.0
    atol = reorder_atol(e.dtype, scale, terms, ulps)
    err = float((a.double() - e.double()).abs().max()) if e.numel() else 0.0
    assert err <= atol, (f"{what}: max |diff| {err:.3e} > {atol:.3e} = {ulps} ulp x scale {scale:.3g} "
                         f"x sqrt({terms} terms) in {e.dtype}")

"""Replay a golden fixture set (shared layout) through our model code.

Each part of the model has a module here (`camera`, `dit`, `vae`, `t5`) with
`run(fixture) -> Iterator[Check]`; `python -m inference.conformance DIR`
runs them all and prints one line per check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GROUPS = ("camera", "t5", "vae", "dit")


@dataclass(kw_only=True)
class Check:
    """One compared tensor: its worst absolute error and whether it is within tolerance."""

    name: str
    max_abs_err: float
    atol: float
    rtol: float
    passed: bool
    note: str = ""

    @property
    def tolerance(self) -> str:
        return f"atol={self.atol:g},rtol={self.rtol:g}"


def compare(name: str, actual, expected, *, atol: float, rtol: float, note: str = "") -> Check:
    """Compare two tensors/arrays elementwise: |a - e| <= atol + rtol * |e| everywhere."""
    a = _as_numpy(actual)
    e = _as_numpy(expected)
    if a.shape != e.shape:
        return Check(name=name, max_abs_err=float("inf"), atol=atol, rtol=rtol, passed=False,
                     note=f"shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    diff = np.abs(a - e)
    err = float(diff.max()) if diff.size else 0.0
    ok = bool(np.all(diff <= atol + rtol * np.abs(e))) and bool(np.all(np.isfinite(a)))
    return Check(name=name, max_abs_err=err, atol=atol, rtol=rtol, passed=ok, note=note)


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor; imported lazily so camera checks need no torch
        x = x.detach().cpu()
        if x.is_complex():
            x = x.resolve_conj()
        return x.double().numpy() if not x.is_complex() else x.numpy()
    return np.asarray(x, dtype=np.float64)


class Fixture:
    """A fixture directory in the shared layout (see the fixture set's README)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = self.root / "fixture_meta.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{meta} not found: {self.root} is not a fixture set")
        self.meta = json.loads(meta.read_text())

    @property
    def control_type(self) -> str:
        """The DiT's control type (`cam` or `act`, from transformer/config.json); every group follows it."""
        config = json.loads(self.path("transformer/config.json").read_text())
        kind = config.get("control_type", "cam")  # the reference's default
        if kind not in ("cam", "act"):
            raise ValueError(f"{self.root}: transformer/config.json control_type {kind!r}, expected 'cam' or 'act'")
        return kind

    def path(self, rel: str) -> Path:
        p = self.root / rel
        if not p.exists():
            raise FileNotFoundError(f"fixture file {p} is missing")
        return p

    def tensors(self, rel: str) -> dict:
        """Load a safetensors file of the set as torch tensors."""
        from safetensors.torch import load_file

        return load_file(str(self.path(rel)))

    def arrays(self, rel: str) -> dict[str, np.ndarray]:
        """Load a safetensors file of the set as numpy arrays (no torch needed)."""
        from safetensors.numpy import load_file

        return load_file(str(self.path(rel)))

"""Conformance of the umT5 encoder against the fixture's t5/ goldens (ids and mask fed directly)."""

from __future__ import annotations

from typing import Iterator

import torch

from inference.conformance import Check, Fixture, compare
from inference.models.t5 import T5Config, load_t5

# README "Tolerances": T5 outputs at atol 1e-4 + rtol 1e-4.
ATOL = 1e-4
RTOL = 1e-4


def run(fixture: Fixture, *, ctx=None, options=None) -> Iterator[Check]:
    """All T5 checks; with a ParallelContext and ParallelOptions the encoder runs in that layout."""
    config = T5Config.from_json(fixture.path("t5/t5_config.json"))
    model = load_t5(fixture.path("t5/t5.pth"), config, "cpu", torch.float32)
    if ctx is not None:
        model = options.apply_t5(model, ctx)
    g = fixture.tensors("t5/goldens.safetensors")

    context = model(g["ids"], g["mask"])  # (B, text_len, dim)
    yield compare("t5/context_full", context, g["context_full"], atol=ATOL, rtol=RTOL)
    seq_lens = g["mask"].gt(0).sum(dim=1)  # how the reference trims each prompt
    yield compare("t5/seq_lens", seq_lens, g["seq_lens"], atol=0, rtol=0)
    for b, length in enumerate(seq_lens.tolist()):
        yield compare(f"t5/context_{b}", context[b, :length], g[f"context_{b}"], atol=ATOL, rtol=RTOL)

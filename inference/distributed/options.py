"""The parallel layout (what --ulysses-size, --dit-fsdp, --t5-fsdp ask for) and applying it to loaded models."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from inference.distributed.context import ParallelContext
from inference.distributed.fsdp import shard_dit, shard_t5
from inference.distributed.ulysses import parallelize_dit
from inference.models.dit import CausalDiT
from inference.models.t5 import T5Encoder


@dataclass(kw_only=True)
class ParallelOptions:
    """How the models are spread over the torchrun group (default: Ulysses over all ranks, no FSDP2)."""

    ulysses_size: int | None = None
    """Ranks splitting one chunk's tokens; None means the whole world."""
    dit_fsdp: bool = False
    """Shard the DiT's block parameters with FSDP2."""
    t5_fsdp: bool = False
    """Shard the T5 encoder's block parameters with FSDP2."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ParallelOptions":
        return cls(ulysses_size=args.ulysses_size, dit_fsdp=args.dit_fsdp, t5_fsdp=args.t5_fsdp)

    def apply_dit(self, model: CausalDiT, ctx: ParallelContext) -> CausalDiT:
        """Ulysses layout, then FSDP2 if asked (before any cache is allocated)."""
        parallelize_dit(model, ctx)
        return shard_dit(model, ctx) if self.dit_fsdp else model

    def apply_t5(self, model: T5Encoder, ctx: ParallelContext) -> T5Encoder:
        return shard_t5(model, ctx) if self.t5_fsdp else model

"""The parallel layout flags (--ulysses-size, --dit-fsdp, --t5-fsdp) and applying them to loaded models."""

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
    """How the models are spread over the torchrun group (all off: every rank holds and runs everything)."""

    ulysses_size: int | None = None
    """Ranks splitting one chunk's tokens; None means the whole world."""
    dit_fsdp: bool = False
    """Shard the DiT's block parameters with FSDP2."""
    t5_fsdp: bool = False
    """Shard the T5 encoder's block parameters with FSDP2."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--ulysses-size", type=int, default=None,
                            help="ranks that split each chunk's tokens (default: all ranks)")
        parser.add_argument("--dit-fsdp", action="store_true", help="shard DiT block weights with FSDP2")
        parser.add_argument("--t5-fsdp", action="store_true", help="shard T5 block weights with FSDP2")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ParallelOptions":
        return cls(ulysses_size=args.ulysses_size, dit_fsdp=args.dit_fsdp, t5_fsdp=args.t5_fsdp)

    def as_args(self) -> list[str]:
        """The flags that reproduce these options on a command line."""
        out = [] if self.ulysses_size is None else ["--ulysses-size", str(self.ulysses_size)]
        return out + ["--dit-fsdp"] * self.dit_fsdp + ["--t5-fsdp"] * self.t5_fsdp

    def apply_dit(self, model: CausalDiT, ctx: ParallelContext) -> CausalDiT:
        """Ulysses layout, then FSDP2 if asked (before any cache is allocated)."""
        parallelize_dit(model, ctx)
        return shard_dit(model, ctx) if self.dit_fsdp else model

    def apply_t5(self, model: T5Encoder, ctx: ParallelContext) -> T5Encoder:
        return shard_t5(model, ctx) if self.t5_fsdp else model

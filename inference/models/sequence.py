"""How the DiT lays a chunk's tokens out over ranks: the one-rank default keeps every token and head local.

A sequence-parallel layout (inference/distributed/ulysses.py) subclasses
`LocalSequence` and is installed from outside with `CausalDiT.use_sequence`;
model code only calls these hooks and never touches torch.distributed.
"""

from __future__ import annotations

import torch

from inference.models.attention import attention
from inference.models.kv_cache import CachePlan, SelfAttentionCache

Rope = tuple[torch.Tensor, torch.Tensor]


class LocalSequence:
    """One rank: all tokens of the chunk and all heads live here; the cache holds every head."""

    ranks = 1

    def local_heads(self, num_heads: int) -> int:
        """Heads of the self-attention cache kept on this rank."""
        return num_heads

    def split(self, tokens: torch.Tensor, rope: Rope, camera: torch.Tensor | None
              ) -> tuple[torch.Tensor, Rope, torch.Tensor | None]:
        """This rank's share of the chunk: tokens (B, L, dim), rope (B, L, 1, head_dim/2), camera (B, L, dim)."""
        return tokens, rope, camera

    def gather(self, out: torch.Tensor, length: int) -> torch.Tensor:
        """Per-token outputs (B, L_local, C) of this rank -> (B, length, C) of the whole chunk."""
        return out

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: SelfAttentionCache, layer: int,
               plan: CachePlan) -> torch.Tensor:
        """Write the chunk's keys/values (B, L, heads, head_dim) into the cache, attend the window; -> like q."""
        k_window, v_window, key_mask = cache.store(layer, plan, k, v)
        return attention(q, k_window, v_window.to(q.dtype), key_mask)

    def write(self, k: torch.Tensor, v: torch.Tensor, cache: SelfAttentionCache, layer: int,
              plan: CachePlan) -> None:
        """Only write the chunk's keys/values (B, L, heads, head_dim) into the cache (`attend` without attending)."""
        cache.write(layer, plan, k, v)

    def full_heads(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """A cache view with this rank's heads on `dim` -> the same view with every head (for checks)."""
        return tensor


LOCAL = LocalSequence()

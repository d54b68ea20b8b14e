"""umT5 text encoder (reference module layout and key names), its config and `.pth` loading."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inference.models.weights import assign_state_dict, read_state_dict


@dataclass(kw_only=True)
class T5Config:
    """Shape of a umT5 encoder."""

    vocab_size: int = 256384
    """Token embedding rows."""
    dim: int = 4096
    """Model width."""
    dim_attn: int = 4096
    """Width of q/k/v (num_heads * head_dim)."""
    dim_ffn: int = 10240
    """Hidden width of the gated feed-forward."""
    num_heads: int = 64
    """Attention heads."""
    num_layers: int = 24
    """Encoder blocks."""
    num_buckets: int = 32
    """Relative-position buckets (half per direction)."""
    max_distance: int = 128
    """Distance beyond which relative positions share the last bucket."""
    shared_pos: bool = False
    """One relative-position table for all blocks (True) or one per block (umT5: False)."""
    eps: float = 1e-6
    """RMS norm epsilon."""
    text_len: int = 512
    """Tokens per prompt after padding/truncation."""

    def __post_init__(self) -> None:
        if self.dim_attn % self.num_heads:
            raise ValueError(f"dim_attn={self.dim_attn} is not divisible by num_heads={self.num_heads}")

    @classmethod
    def umt5_xxl(cls) -> "T5Config":
        """The umT5-XXL encoder of models_t5_umt5-xxl-enc-bf16.pth."""
        return cls()

    @classmethod
    def from_json(cls, path: str | Path) -> "T5Config":
        """A fixture's t5_config.json: umt5_xxl() with its "umt5_xxl_overrides" and "text_len"."""
        raw = json.loads(Path(path).read_text())
        overrides = dict(raw.get("umt5_xxl_overrides", {}))
        if "encoder_layers" in overrides:
            overrides["num_layers"] = overrides.pop("encoder_layers")
        for unused in ("decoder_layers", "dropout"):  # decoder / training-only settings
            overrides.pop(unused, None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{path}: unknown umT5 settings {unknown}, expected some of {sorted(known)}")
        if "text_len" in raw:
            overrides["text_len"] = int(raw["text_len"])
        return cls(**overrides)


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias; statistics in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x.to(self.weight.dtype)


class TanhGELU(nn.Module):
    """GELU with the tanh approximation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class T5FeedForward(nn.Module):
    """fc2(fc1(x) * gelu(gate(x)))."""

    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), TanhGELU())
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5RelativeEmbedding(nn.Module):
    """Bidirectional bucketed relative-position bias, one value per head."""

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, length: int) -> torch.Tensor:
        """Bias (1, heads, length, length) for queries i and keys j."""
        pos = torch.arange(length, device=self.embedding.weight.device)
        rel = pos[None, :] - pos[:, None]  # (Lq, Lk): key position minus query position
        return self.embedding(self._bucket(rel)).permute(2, 0, 1)[None]

    def _bucket(self, rel: torch.Tensor) -> torch.Tensor:
        half = self.num_buckets // 2  # keys after the query use the upper half
        bucket = (rel > 0).long() * half
        dist = rel.abs()
        exact = half // 2  # distances below this get their own bucket
        # log-spaced buckets from `exact` up to max_distance; clamp avoids log(0) on exact distances
        log_ratio = torch.log(dist.clamp(min=1).float() / exact) / math.log(self.max_distance / exact)
        far = (exact + (log_ratio * (half - exact)).long()).clamp(max=half - 1)
        return bucket + torch.where(dist < exact, dist, far)


class T5Attention(nn.Module):
    """Multi-head self-attention without 1/sqrt(d) scaling; bias = relative position + key mask."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        q, k, v = (proj(x).view(b, length, self.num_heads, -1).transpose(1, 2)  # (B, N, L, head_dim)
                   for proj in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) + bias  # (B, N, L, L); T5 does not scale by 1/sqrt(d)
        weights = scores.float().softmax(dim=-1).to(q.dtype)
        out = (weights @ v).transpose(1, 2).reshape(b, length, -1)  # (B, L, dim_attn)
        return self.o(out)


class T5Block(nn.Module):
    """Pre-norm self-attention then pre-norm gated feed-forward, both residual."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.norm1 = T5LayerNorm(config.dim, config.eps)
        self.attn = T5Attention(config.dim, config.dim_attn, config.num_heads)
        self.norm2 = T5LayerNorm(config.dim, config.eps)
        self.ffn = T5FeedForward(config.dim, config.dim_ffn)
        self.pos_embedding = None if config.shared_pos else T5RelativeEmbedding(
            config.num_buckets, config.num_heads, config.max_distance)

    def forward(self, x: torch.Tensor, key_mask_bias: torch.Tensor, shared_bias: torch.Tensor | None) -> torch.Tensor:
        pos = shared_bias if self.pos_embedding is None else self.pos_embedding(x.shape[1])
        # masked keys take finfo.min instead of their position bias (reference fills, not adds)
        bias = torch.where(key_mask_bias, torch.finfo(x.dtype).min, pos.to(x.dtype))
        x = _clamp_fp16(x + self.attn(self.norm1(x), bias))
        return _clamp_fp16(x + self.ffn(self.norm2(x)))


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    # float16 activations of T5 overflow; keep them finite as the reference does
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = x.clamp(-limit, limit)
    return x


class T5Encoder(nn.Module):
    """Token ids (B, L) + mask (B, L) -> hidden states (B, L, dim) for every position."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.pos_embedding = T5RelativeEmbedding(
            config.num_buckets, config.num_heads, config.max_distance) if config.shared_pos else None
        self.blocks = nn.ModuleList(T5Block(config) for _ in range(config.num_layers))
        self.norm = T5LayerNorm(config.dim, config.eps)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(ids)  # (B, L, dim)
        length = ids.shape[1]
        masked = torch.zeros(1, 1, 1, length, dtype=torch.bool, device=ids.device) if mask is None \
            else (mask == 0).view(ids.shape[0], 1, 1, length)  # (B, 1, 1, Lk): padded keys
        shared = self.pos_embedding(length) if self.pos_embedding is not None else None
        for block in self.blocks:
            x = block(x, masked, shared)
        return self.norm(x)


def load_t5(path: str | Path, config: T5Config | None = None, device: torch.device | str = "cpu",
            dtype: torch.dtype = torch.bfloat16, *, model_dir: str | Path | None = None) -> T5Encoder:
    """Build the encoder on the meta device and strictly load a `.pth` state dict
    (models_t5_umt5-xxl-enc-bf16.pth), each tensor straight to device/dtype."""
    config = config or T5Config.umt5_xxl()
    state = read_state_dict(path, what="umT5 text encoder", model_dir=model_dir)
    with torch.device("meta"):
        model = T5Encoder(config)
    return assign_state_dict(model, state, device=device, dtype=dtype, source=path)

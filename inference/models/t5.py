"""umT5 text encoder: model (reference key names), config, `.pth` loading, cached prompt -> context wrapper."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from inference.models.tokenizer import PromptTokenizer, clean_prompt
from inference.models.weights import assign_state_dict, read_state_dict

# File and folder names inside the checkpoint folder (MODEL.md "Checkpoint layout").
T5_CHECKPOINT_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"


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


class TextEncoder:
    """Prompts -> list of (L_i, dim) contexts, trimmed to each prompt's token count.

    Keeps a bounded LRU cache of encodings keyed by the cleaned prompt; a hit
    returns the cached tensor without running the model (callers must not
    modify returned tensors in place).
    """

    def __init__(self, model: T5Encoder, tokenizer: PromptTokenizer, *, cache_size: int = 64):
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0  # prompts answered from the cache
        self.misses = 0  # prompts that ran through the model

    @classmethod
    def from_checkpoint(cls, model_dir: str | Path, *, device: torch.device | str, dtype: torch.dtype = torch.bfloat16,
                        config: T5Config | None = None, cache_size: int = 64) -> "TextEncoder":
        """Load the encoder and tokenizer from a downloaded checkpoint folder (see MODEL.md)."""
        model_dir = Path(model_dir)
        config = config or T5Config.umt5_xxl()
        model = load_t5(model_dir / T5_CHECKPOINT_FILE, config, device, dtype, model_dir=model_dir)
        tokenizer = PromptTokenizer(model_dir / T5_TOKENIZER_DIR, text_len=config.text_len, model_dir=model_dir)
        return cls(model, tokenizer, cache_size=cache_size)

    def __call__(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        return self.encode(prompts)

    def encode(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """One (L_i, dim) context per prompt, in order; unseen prompts are encoded in one batch."""
        if isinstance(prompts, str):
            raise TypeError(f"TextEncoder.encode takes a list of prompts, got the string {prompts[:40]!r}")
        keys = [clean_prompt(p) for p in prompts]
        todo = [k for k in dict.fromkeys(keys) if k not in self._cache]
        fresh = dict(zip(todo, self._run(todo))) if todo else {}
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        out = [fresh[k] if k in fresh else self._cache[k] for k in keys]
        for k in keys:
            if k in fresh:
                self._remember(k, fresh[k])
            elif k in self._cache:
                self._cache.move_to_end(k)
        return out

    def _run(self, texts: list[str]) -> list[torch.Tensor]:
        ids, mask = self.tokenizer(texts)  # (B, text_len) each
        vocab = self.model.config.vocab_size
        if int(ids.max()) >= vocab:
            raise ValueError(f"tokenizer {self.tokenizer.path} produced id {int(ids.max())}, "
                             f"but the encoder's vocabulary has {vocab} rows")
        device = self.model.token_embedding.weight.device
        context = self.model(ids.to(device), mask.to(device))  # (B, text_len, dim)
        lengths = mask.gt(0).sum(dim=1).tolist()
        return [context[i, :n].clone() for i, n in enumerate(lengths)]  # clone: drop the padded rows

    def _remember(self, key: str, value: torch.Tensor) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)  # least recently used

    def cached_prompts(self) -> list[str]:
        """Cached (cleaned) prompts, least recently used first."""
        return list(self._cache)

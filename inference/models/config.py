"""Configuration of the LingBot-World-Fast causal DiT (reference `WanModelFast` names)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# Keys the reference drops from config.json (`WanModelFast.ignore_for_config`);
# its loader always builds them with these defaults.
REFERENCE_DEFAULTS_NOT_IN_JSON = {
    "text_dim": 4096,
    "patch_size": (1, 2, 2),
    "qk_norm": True,
    "cross_attn_norm": True,
}

# Per-pixel control channels: Plücker (origin 3 + direction 3) or direction 3 + WASD 4.
CONTROL_CHANNELS = {"cam": 6, "act": 7}

# Pixels of one 8x8 VAE cell folded into the control channels.
CONTROL_PIXELS_PER_CELL = 64

# Positions of each RoPE table (reference `rope_params(1024, ...)`).
ROPE_POSITIONS = 1024


@dataclass(kw_only=True)
class DiTConfig:
    """Hyper-parameters of the causal DiT, with the reference constructor names."""

    model_type: str = "i2v"
    """'i2v' (noisy latent + 20 condition channels) or 't2v'."""
    control_type: str = "cam"
    """'cam' (6 Plücker channels per pixel) or 'act' (3 ray directions + 4 WASD)."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch (frames, height, width) of the Conv3d embedding, in latent cells."""
    text_len: int = 512
    """Text tokens after zero padding; every padded row is attended."""
    in_dim: int = 36
    """Input channels: 16 noisy latent + 20 condition (4 mask + 16 image latent)."""
    dim: int = 5120
    """Transformer width."""
    ffn_dim: int = 13824
    """Hidden width of each block's feed-forward network."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding."""
    text_dim: int = 4096
    """Width of the text encoder output (umT5-XXL)."""
    out_dim: int = 16
    """Output channels (a flow prediction on the VAE latent)."""
    num_heads: int = 40
    """Attention heads (self and cross)."""
    num_layers: int = 40
    """Transformer blocks."""
    local_attn_size: int = -1
    """Self-attention window in latent frames; -1 keeps every frame (global cache)."""
    sink_size: int = 0
    """Leading latent frames kept forever when the window cache evicts."""
    qk_norm: bool = True
    """RMSNorm over the full width on queries and keys."""
    cross_attn_norm: bool = True
    """Affine LayerNorm before cross-attention (the reference default is True)."""
    eps: float = 1e-6
    """Epsilon of every LayerNorm/RMSNorm."""

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.model_type not in ("i2v", "t2v"):
            raise ValueError(f"model_type {self.model_type!r}: expected 'i2v' or 't2v'")
        if self.control_type not in CONTROL_CHANNELS:
            raise ValueError(f"control_type {self.control_type!r}: expected one of {sorted(CONTROL_CHANNELS)}")
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size {self.patch_size}: expected 3 values (frames, height, width)")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim {self.dim} with num_heads {self.num_heads}: head_dim must be an even integer")
        if self.local_attn_size != -1 and self.local_attn_size <= self.sink_size:
            raise ValueError(f"local_attn_size {self.local_attn_size} must exceed sink_size {self.sink_size} (or be -1)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def control_channels(self) -> int:
        """Channels of the control tensor fed to the DiT (e.g. 6*64 = 384 for 'cam')."""
        return CONTROL_CHANNELS[self.control_type] * CONTROL_PIXELS_PER_CELL

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)

    @classmethod
    def a14b_fast(cls, **overrides) -> DiTConfig:
        """The released LingBot-World-Fast (A14B) DiT."""
        base = dict(model_type="i2v", control_type="cam", dim=5120, ffn_dim=13824, freq_dim=256,
                    text_dim=4096, text_len=512, in_dim=36, out_dim=16, num_heads=40, num_layers=40)
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> DiTConfig:
        """The shared fixture's random-weight model (552384 parameters)."""
        base = dict(model_type="i2v", control_type="cam", dim=64, ffn_dim=128, freq_dim=32, text_dim=4096,
                    text_len=16, in_dim=36, out_dim=16, num_heads=4, num_layers=2)
        return cls(**{**base, **overrides})

    @classmethod
    def from_dict(cls, raw: dict) -> DiTConfig:
        """Build from a diffusers-style dict: '_'-prefixed keys ignored, absent keys at reference defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if not k.startswith("_")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"DiT config has unknown keys {unknown}; expected a subset of {sorted(known)}")
        merged = {**REFERENCE_DEFAULTS_NOT_IN_JSON, **values}
        if isinstance(merged["patch_size"], list):
            merged["patch_size"] = tuple(merged["patch_size"])
        return cls(**merged)

    @classmethod
    def from_json(cls, path: str | Path) -> DiTConfig:
        """Read a diffusers-style config.json (it lacks text_dim, patch_size, qk_norm, cross_attn_norm)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); re-download the checkpoint folder") from exc
        return cls.from_dict(raw)

    def to_json_dict(self) -> dict:
        """The config.json content the reference writes; ignored keys only when they differ from its defaults."""
        out = {"_class_name": "WanModelFast"}
        for key, value in sorted(asdict(self).items()):
            if key in REFERENCE_DEFAULTS_NOT_IN_JSON and tuple_or(value) == tuple_or(REFERENCE_DEFAULTS_NOT_IN_JSON[key]):
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def tuple_or(value):
    """Tuples and lists compare equal when their items do (json has no tuples)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value

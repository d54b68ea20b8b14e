"""Transformer blocks of the causal DiT: cached self-attention, camera injection, cross-attention, FFN, head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inference.models.attention import attention
from inference.models.kv_cache import CachePlan, SelfAttentionCache
from inference.models.packed_linear import Linear
from inference.models.rope import rotate
from inference.models.sequence import LOCAL, LocalSequence


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dim, computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm sums and scales in float32 whatever x's dtype, then rounds to it once, as the reference does
        return F.rms_norm(x, self.weight.shape, eps=self.eps) * self.weight


class FloatLayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32 whatever the weight dtype (as the reference's autocast regions do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class FloatLinear(nn.Linear):
    """Linear evaluated in float32 whatever the weight dtype: the reference runs the time embedding, time
    projection and head under float32 autocast, and their outputs scale every block's residual stream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias)


def layer_norm(dim: int, eps: float, affine: bool) -> FloatLayerNorm:
    return FloatLayerNorm(dim, eps=eps, elementwise_affine=affine)


def run_in_weight_dtype(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a layer to x cast to the layer's weight dtype (float32 residual, bf16 weights on GPU)."""
    return layer(x.to(layer.weight.dtype))


class AttentionProjections(nn.Module):
    """The q/k/v/o projections and q/k RMSNorms shared by self- and cross-attention (reference names)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = Linear(dim, dim)
        self.k = Linear(dim, dim)
        self.v = Linear(dim, dim)
        self.o = Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()


class CausalSelfAttention(AttentionProjections):
    """Self-attention of a chunk over itself and the cached past, with q/k RMSNorm and 3-D RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__(dim, num_heads, qk_norm, eps)
        self.sequence: LocalSequence = LOCAL  # token/head layout over ranks; set from outside (CausalDiT.use_sequence)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                cache: SelfAttentionCache, layer: int, plan: CachePlan) -> torch.Tensor:
        """x (B, L, dim) in the weights' dtype, freqs: RoPE `rotations` (B, L, 1, head_dim/2)."""
        batch, length, _ = x.shape
        # RMSNorm runs over the full width, before the head split.
        q = self.norm_q(self.q(x)).view(batch, length, self.num_heads, self.head_dim)  # (B, L, heads, head_dim)
        k, v = self.keys(x, freqs)
        q = rotate(q, freqs)
        out = self.sequence.attend(q, k, v, cache, layer, plan)  # (B, L, heads, head_dim)
        return self.o(out.flatten(2))  # (B, L, dim)

    def keys(self, x: torch.Tensor, freqs: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's rotated keys and its values (B, L, heads, head_dim) from x (B, L, dim)."""
        batch, length, _ = x.shape
        k = self.norm_k(self.k(x)).view(batch, length, self.num_heads, self.head_dim)
        v = self.v(x).view(batch, length, self.num_heads, self.head_dim)
        return rotate(k, freqs), v

    def write_keys(self, x: torch.Tensor, freqs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                   cache: SelfAttentionCache, layer: int, plan: CachePlan) -> None:
        """Store the chunk's keys/values and stop: what `forward` writes, without its attention and output."""
        self.sequence.write(*self.keys(x, freqs), cache, layer, plan)


class CrossAttention(AttentionProjections):
    """Attention of the tokens to the (cached) projected text context."""

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, text_len, heads, head_dim) of an embedded context (B, text_len, dim)."""
        batch, length, _ = context.shape
        context = context.to(self.k.weight.dtype)
        k = self.norm_k(self.k(context)).view(batch, length, self.num_heads, self.head_dim)
        v = self.v(context).view(batch, length, self.num_heads, self.head_dim)
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, dim), k/v (B, T, heads, head_dim) text keys, bias (B, T) their score bias or None."""
        batch, length, _ = x.shape
        x = x.to(self.q.weight.dtype)
        q = self.norm_q(self.q(x)).view(batch, length, self.num_heads, self.head_dim)  # (B, L, heads, head_dim)
        out = attention(q, k.to(q.dtype), v.to(q.dtype), bias)
        return self.o(out.flatten(2))  # (B, L, dim)


class DiTBlock(nn.Module):
    """One block: modulated self-attention, camera injection, cross-attention, modulated FFN."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool, cross_attn_norm: bool, eps: float):
        super().__init__()
        self.norm1 = layer_norm(dim, eps, affine=False)
        self.self_attn = CausalSelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = layer_norm(dim, eps, affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, qk_norm, eps)
        self.norm2 = layer_norm(dim, eps, affine=False)
        self.ffn = nn.Sequential(Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.cam_injector_layer1 = Linear(dim, dim)
        self.cam_injector_layer2 = Linear(dim, dim)
        self.cam_scale_layer = Linear(dim, dim)
        self.cam_shift_layer = Linear(dim, dim)

    def camera_modulation(self, camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera tokens (B, L, dim) -> this block's (1 + scale, shift), float32 (B, L, dim) each.

        Depends on the camera condition alone, so every DiT call of a chunk may share it.
        """
        hidden = run_in_weight_dtype(self.cam_injector_layer2,
                                     F.silu(run_in_weight_dtype(self.cam_injector_layer1, camera))) + camera
        scale = run_in_weight_dtype(self.cam_scale_layer, hidden).float()
        shift = run_in_weight_dtype(self.cam_shift_layer, hidden).float()
        return 1.0 + scale, shift

    def attention_input(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The self-attention's input: x normed and modulated, in the weights' dtype."""
        return torch.addcmul(shift, self.norm1(x), 1 + scale).to(self.self_attn.q.weight.dtype)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, freqs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                camera: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
                text_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
                cache: SelfAttentionCache, layer: int, plan: CachePlan, keys_only: bool = False) -> torch.Tensor | None:
        """x (B, L, dim) float32, e0 (B, 6, dim) float32; camera: tokens (B, L, dim), their
        `camera_modulation` (reused across a chunk's calls) or None. keys_only: store this block's keys/values
        and stop (returns None; a module call still, so that sharded weights are gathered as for `forward`)."""
        mod = (self.modulation.float() + e0).unsqueeze(2)  # (B, 6, 1, dim): broadcast over tokens
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(1)
        if keys_only:
            self.self_attn.write_keys(self.attention_input(x, shift1, scale1), freqs, cache, layer, plan)
            return None
        y = self.self_attn(self.attention_input(x, shift1, scale1), freqs, cache, layer, plan)
        x = torch.addcmul(x, y, gate1)  # float32: y is promoted
        if camera is not None:
            gain, shift = camera if isinstance(camera, tuple) else self.camera_modulation(camera)
            x = torch.addcmul(shift, gain, x)
        x = x + self.cross_attn(self.norm3(x), *text_kv).float()
        y = run_in_weight_dtype(self.ffn[0], torch.addcmul(shift2, self.norm2(x), 1 + scale2))
        y = self.ffn[2](self.ffn[1](y))
        return torch.addcmul(x, y, gate2)


class Head(nn.Module):
    """Final modulated LayerNorm + Linear to patch_volume * out_dim channels per token."""

    def __init__(self, dim: int, out_dim: int, patch_volume: int, eps: float):
        super().__init__()
        self.norm = layer_norm(dim, eps, affine=False)
        self.head = FloatLinear(dim, patch_volume * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim) float32, e (B, dim) float32 -> (B, L, patch_volume * out_dim) float32."""
        shift, scale = (self.modulation.float() + e.unsqueeze(1)).unsqueeze(2).unbind(1)  # (B, 1, dim) each
        return self.head(self.norm(x) * (1 + scale) + shift)

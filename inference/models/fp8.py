"""`--weights fp8`: the DiT blocks' linear weights as float8 e4m3 with one scale per output channel (torchao).

torchao (PyTorch's quantization library) stores each weight as float8_e4m3fn
data plus a float32 scale per output channel (row), and reports the original
dtype, so the model code is unchanged. On GPUs with FP8 tensor cores
(compute capability >= 8.9: Ada, Hopper, Blackwell) activations are
quantized per token at run time and the matmul runs as `torch._scaled_mm`;
elsewhere (CPU included, so it is tested here) the weight is dequantized to
the activation dtype inside each linear. Only the blocks' linears change
(99.96% of the A14B DiT's parameters); embeddings, norms, modulation and
the head keep their dtype.
"""

from __future__ import annotations

import torch
from torch import nn

FP8_MIN_CAPABILITY = (8, 9)


def fp8_tensor_cores(device: torch.device) -> bool:
    """Whether `device` multiplies float8 natively (else the weight-only, dequantizing path is used)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


def quantize_blocks(model: nn.Module, blocks: nn.ModuleList) -> str:
    """Store every nn.Linear weight inside `blocks` as float8 e4m3 + per-output-channel scales, in place.

    Returns the path taken: 'fp8 matmul' (torch._scaled_mm) or 'fp8 weights, dequantized matmul'.
    Linears are replaced one at a time, so the extra memory is one layer's weight.
    """
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerRow,
                                      quantize_)

    device = next(model.parameters()).device
    if fp8_tensor_cores(device):
        config, path = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), "fp8 matmul"
    else:
        config, path = Float8WeightOnlyConfig(), "fp8 weights, dequantized matmul"
    quantize_(blocks, config, filter_fn=lambda module, _: isinstance(module, nn.Linear))
    return path


def inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding a (possibly wrapped: torchao, DTensor) tensor's data."""
    if not hasattr(t, "__tensor_flatten__"):
        return [t]
    names, _ = t.__tensor_flatten__()
    parts = [getattr(t, n) for n in names]
    return [leaf for p in parts if isinstance(p, torch.Tensor) for leaf in inner_tensors(p)]


def is_fp8(model: nn.Module) -> bool:
    """Whether any linear weight of the model is stored as float8 (a torchao tensor with float8 data)."""
    return any(isinstance(m, nn.Linear) and any(t.dtype == torch.float8_e4m3fn for t in inner_tensors(m.weight))
               for m in model.modules())


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters (the float8 data and scales of quantized weights)."""
    return sum(t.numel() * t.element_size() for p in model.parameters() for t in inner_tensors(p))

"""nn.Linear whose bfloat16 calls on the CPU multiply by a oneDNN-prepacked copy of the weight."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn


def _packing_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


PACKING = _packing_available()
# module -> ((weight data pointer, weight version), packed weight); outside the module, so copies, state dicts
# and pickles of the model never meet the opaque oneDNN tensor
_packed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Linear(nn.Linear):
    """nn.Linear (same parameters, same results: the product is bit-for-bit F.linear's) that packs its weight.

    oneDNN multiplies bfloat16 in a blocked layout and reorders a plain
    weight into it on every call. For the DiT's short GEMMs (a chunk of a
    few hundred tokens against a 512-5120 wide weight) that reorder halves
    the throughput when every call meets another weight, as a forward does
    (bench/dit_efficiency.py: "model shapes" against a chunk). So eager
    bfloat16 CPU calls keep a packed copy, made on first use and again
    whenever the weight changes (its data pointer or version counter moves,
    as load_state_dict and .to() do). The copy costs the weight's bytes once
    more (CPU only). Traced calls (torch.compile) and calls that autograd
    must see take F.linear.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (not PACKING or x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16 or x.device.type != "cpu"
                or weight.device.type != "cpu" or type(weight) is not nn.Parameter and type(weight) is not torch.Tensor
                or torch.compiler.is_compiling()
                or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
            return F.linear(x, weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(x), self.bias, "none", [], "")

    def packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version)
        cached = _packed.get(self)
        if cached is None or cached[0] != key:
            rows = x.numel() // x.shape[-1]  # a layout hint only: other row counts use the same packing
            cached = _packed[self] = key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), rows)
        return cached[1]

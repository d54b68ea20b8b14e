"""nn.Linear whose bfloat16 calls on the CPU multiply by a oneDNN-prepacked copy of the weight."""

from __future__ import annotations

import contextlib
import functools
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
# id(weight) -> (weak reference to it, (data pointer, version), packed copy): checked against the weight itself,
# so a new weight never meets an old copy, and kept outside the module, so copies, state dicts and pickles
# never meet the opaque oneDNN tensor; an entry leaves with its weight
_packed: dict[int, tuple[weakref.ref, tuple[int, int], torch.Tensor]] = {}
# True while a step compiles with its weights frozen into the graph (`frozen_weights`): Linear then traces as
# F.linear, whose frozen weight Inductor packs once itself, fusing the bias and a GELU that follows into the
# product (the opaque op below hides both from it)
_frozen = False


@contextlib.contextmanager
def frozen_weights():
    """Trace Linears as F.linear: for a compile that freezes the weights (Inductor's `freezing` option)."""
    global _frozen
    before, _frozen = _frozen, True
    try:
        yield
    finally:
        _frozen = before


class Linear(nn.Linear):
    """nn.Linear (same parameters, same results: the product is bit-for-bit F.linear's) that packs its weight.

    oneDNN multiplies bfloat16 in a blocked layout and reorders a plain
    weight into it on every call. For the DiT's short GEMMs (a chunk of a
    few hundred tokens against a 512-5120 wide weight) that reorder halves
    the throughput when every call meets another weight, as a forward does.
    So bfloat16 CPU calls keep a packed copy per weight, made on first use
    and again whenever the weight changes in place (its version counter
    moves, as load_state_dict does). The copy costs the weight's bytes once
    more (CPU only). A compile reaches it through the opaque op
    `lingbot::packed_linear`, except one that freezes the weights into its
    graph (`frozen_weights`), where Inductor packs them itself; calls that
    autograd must see take F.linear.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (not PACKING or x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16 or x.device.type != "cpu"
                or weight.device.type != "cpu" or type(weight) not in (nn.Parameter, torch.Tensor)
                or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
            return F.linear(x, weight, self.bias)
        if torch.compiler.is_compiling():
            return F.linear(x, weight, self.bias) if _frozen else packed_linear(x, weight, self.bias)
        return packed_product(x, weight, self.bias)


def packed_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias through the weight's packed copy (bfloat16 CPU tensors)."""
    key = (weight.data_ptr(), weight._version)
    cached = _packed.get(id(weight))
    if cached is None or cached[0]() is not weight or cached[1] != key:
        rows = x.numel() // x.shape[-1]  # a layout hint only: other row counts use the same packing
        gone = functools.partial(_forget, id(weight))
        cached = _packed[id(weight)] = (weakref.ref(weight, gone), key,
                                        torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows))
    return torch.ops.mkldnn._linear_pointwise(x, cached[2], bias, "none", [], "")


def _forget(weight_id: int, ref: weakref.ref) -> None:
    entry = _packed.get(weight_id)
    if entry is not None and entry[0] is ref:
        del _packed[weight_id]


def packed_bytes(module: nn.Module) -> int:
    """Bytes the packed copies of `module`'s Linears take once used (bfloat16 weights on the CPU; else 0)."""
    return sum(m.weight.numel() * m.weight.element_size() for m in module.modules() if isinstance(m, Linear)
               and PACKING and m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu"
               and type(m.weight) in (nn.Parameter, torch.Tensor))


def is_packed(weight: torch.Tensor) -> bool:
    """Whether `weight` has a packed copy (for tests)."""
    entry = _packed.get(id(weight))
    return entry is not None and entry[0]() is weight


@torch.library.custom_op("lingbot::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`packed_product` as one opaque op of a compiled graph (the runtime passes the parameter itself)."""
    return packed_product(x, weight, bias)


@packed_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])

"""The DiT's Linear: bf16 CPU calls through a prepacked weight equal F.linear exactly and follow weight changes."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from inference.models import packed_linear
from inference.models.packed_linear import Linear

pytestmark = pytest.mark.skipif(not packed_linear.PACKING, reason="this torch build has no oneDNN linear packing")


def bf16_linear(rows_in: int = 48, rows_out: int = 40, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    return Linear(rows_in, rows_out).to(torch.bfloat16).requires_grad_(False)


def test_packed_product_is_f_linear_bit_for_bit_for_any_row_count():
    """The packed path runs (a packed copy exists) and returns F.linear's bits for 2-D and 3-D inputs of other
    row counts than the one it was packed for."""
    layer = bf16_linear()
    for shape in ((7, 48), (1, 30, 48), (2, 5, 48)):
        x = torch.randn(shape).bfloat16()
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias)), shape
    assert packed_linear.is_packed(layer.weight)
    assert packed_linear.packed_bytes(torch.nn.Sequential(layer, Linear(4, 4))) == 40 * 48 * 2  # bf16 ones only


def test_a_changed_weight_is_repacked():
    """load_state_dict (in place) and a new weight tensor both reach the product: no stale packed copy."""
    layer, other = bf16_linear(seed=0), bf16_linear(seed=1)
    x = torch.randn(9, 48).bfloat16()
    before = layer(x)
    layer.load_state_dict(other.state_dict())
    assert torch.equal(layer(x), other(x)) and not torch.equal(layer(x), before)
    layer.weight = torch.nn.Parameter(torch.zeros(40, 48, dtype=torch.bfloat16), requires_grad=False)
    assert torch.equal(layer(x), layer.bias.expand(9, 40))


def test_float32_autograd_and_copies_take_the_plain_path():
    """float32 inputs, calls autograd must see, and copies / pickles of a used layer all work as nn.Linear."""
    layer = bf16_linear()
    x = torch.randn(4, 48).bfloat16()
    layer(x)  # packed once
    assert torch.equal(copy.deepcopy(layer)(x), layer(x))
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), layer(x))
    grad = Linear(48, 40).to(torch.bfloat16)
    out = grad(x)
    assert out.requires_grad and not packed_linear.is_packed(grad.weight)
    out.float().sum().backward()
    assert grad.weight.grad is not None
    fp32 = Linear(48, 40)
    assert torch.equal(fp32(x.float()), F.linear(x.float(), fp32.weight, fp32.bias))


@torch.no_grad()
def test_a_compiled_graph_calls_the_packed_op_without_a_graph_break():
    """Under torch.compile the packed product is one opaque op: no graph break, F.linear's bits, and a weight
    loaded in place after compiling reaches the compiled graph's product."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    first, second = bf16_linear(seed=2), bf16_linear(40, 24, seed=3)
    fn = torch.compile(lambda x: second(torch.relu(first(x))), fullgraph=True)
    x = torch.randn(6, 48).bfloat16()
    want = lambda: F.linear(torch.relu(F.linear(x, first.weight, first.bias)), second.weight, second.bias)  # noqa: E731
    assert torch.equal(fn(x), want())
    first.load_state_dict(bf16_linear(seed=4).state_dict())
    assert torch.equal(fn(x), want())
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1

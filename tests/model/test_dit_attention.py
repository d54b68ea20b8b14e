"""The attention dispatcher: backend choice and SDPA results."""

import torch

from inference.models.attention import attention, attention_backend
from tests.tolerance import assert_reorder_close


def reference_attention(q, k, v):
    scores = torch.einsum("blhd,bkhd->bhlk", q.double(), k.double()) / q.shape[-1] ** 0.5
    return torch.einsum("bhlk,bkhd->blhd", scores.softmax(-1), v.double()).float()


def test_cpu_tensors_fall_back_to_sdpa_and_match_softmax_attention():
    """On CPU the dispatcher picks SDPA and returns softmax(q k^T / sqrt(d)) v in (B, L, heads, dim) layout."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 3, 8, generator=g) for _ in range(3))
    assert attention_backend(q, k) == "sdpa"
    assert attention_backend(q.bfloat16(), k.bfloat16()) == "sdpa"
    # float32 against float64: one summation order against the exact sums, q.k (head_dim) then p.v (keys)
    assert_reorder_close(attention(q, k, v), reference_attention(q, k, v), terms=8 + 5)


def test_key_mask_hides_padded_keys_per_item():
    """With a key mask, each item attends only its own valid keys."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 2, 8, generator=g)
    k, v = torch.randn(2, 7, 2, 8, generator=g), torch.randn(2, 7, 2, 8, generator=g)
    lengths = [7, 3]
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    out = attention(q, k, v, mask)
    for b, n in enumerate(lengths):
        expected = reference_attention(q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n])
        assert_reorder_close(out[b:b + 1], expected, terms=8 + n, what=f"item {b}")

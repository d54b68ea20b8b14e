"""The attention dispatcher: backend choice, the direct CPU path's results, masks and key biases."""

import math

import torch

from inference.models.attention import attention, attention_backend, backend_report
from tests.tolerance import assert_reorder_close


def reference_attention(q, k, v):
    scores = torch.einsum("blhd,bkhd->bhlk", q.double(), k.double()) / q.shape[-1] ** 0.5
    return torch.einsum("bhlk,bkhd->blhd", scores.softmax(-1), v.double()).float()


def test_cpu_tensors_take_the_direct_path_and_match_softmax_attention():
    """On CPU the dispatcher picks matmul-softmax-matmul and returns softmax(q k^T / sqrt(d)) v in (B, L, heads,
    dim) layout; /status reports it."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 3, 8, generator=g) for _ in range(3))
    assert attention_backend(q, k) == "direct" == backend_report(torch.device("cpu"), torch.float32, 64)
    # bfloat16 also says how its scores are multiplied (tests/model/test_cpu_kernels.py)
    assert backend_report(torch.device("cpu"), torch.bfloat16, 64).startswith("direct (bf16: ")
    assert attention_backend(q.bfloat16(), k.bfloat16()) == "direct"
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


def test_a_log_count_bias_stands_for_repeated_keys():
    """One key with bias log(n) attends like n copies of it (the compact text cache relies on it)."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 2, 8, generator=g)
    k, v = torch.randn(1, 3, 2, 8, generator=g), torch.randn(1, 3, 2, 8, generator=g)
    repeated_k = torch.cat([k[:, :2], k[:, 2:].expand(1, 5, 2, 8)], dim=1)  # the last key 5 times
    repeated_v = torch.cat([v[:, :2], v[:, 2:].expand(1, 5, 2, 8)], dim=1)
    bias = torch.tensor([[0.0, 0.0, math.log(5)]])
    assert_reorder_close(attention(q, k, v, bias), reference_attention(q, repeated_k, repeated_v), terms=8 + 7)


def test_bfloat16_scores_stay_float32():
    """bfloat16 inputs with peaky scores: the direct path's error is that of bfloat16 inputs and output, not of
    bfloat16 scores (which would be several times larger)."""
    g = torch.Generator().manual_seed(3)
    q, k = (3 * torch.randn(1, 64, 4, 64, generator=g) for _ in range(2))  # scores of tens: nearly one-hot rows
    v = torch.randn(1, 64, 4, 64, generator=g)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    exact = reference_attention(qb.float(), kb.float(), vb.float())  # float64 on the rounded inputs
    err = (attention(qb, kb, vb).float() - exact).abs().max()
    # output and probabilities each rounded once to bfloat16: within one bfloat16 eps of the scale (scores
    # rounded to bfloat16 miss it 2.5x on these inputs)
    assert err <= torch.finfo(torch.bfloat16).eps * exact.abs().max()


def test_large_score_tensors_are_computed_a_block_of_heads_at_a_time(monkeypatch):
    """Past SCORE_BLOCK_BYTES the direct path splits the batch and heads into blocks; the result (per-item masks
    included) is the whole computation's, and the plan's direct-attention bytes count one block."""
    from inference.models import attention as module

    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 6, 5, 8, generator=g)
    k, v = torch.randn(2, 9, 5, 8, generator=g), torch.randn(2, 9, 5, 8, generator=g)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 4])[:, None]
    whole = attention(q, k, v, mask)
    assert module.direct_attention_bytes(2, 5, 6, 9, 8) == 2 * 5 * (6 * 9 * 4 + 8 * 4 * (6 + 9))
    monkeypatch.setattr(module, "SCORE_BLOCK_BYTES", 2 * 6 * 9 * 4)  # two heads of one item per block
    blocks, block = [], module.attention_block

    def counted(q_, k_, v_, bias):
        blocks.append(q_.shape[2])
        return block(q_, k_, v_, bias)

    monkeypatch.setattr(module, "attention_block", counted)
    split = attention(q, k, v, mask)
    assert blocks == [2, 2, 1, 2, 2, 1]  # per item: heads 0-1, 2-3, 4
    assert module.direct_attention_bytes(2, 5, 6, 9, 8) == 2 * (6 * 9 * 4 + 8 * 4 * (6 + 9))
    assert torch.equal(split, whole)

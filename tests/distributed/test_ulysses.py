"""Ulysses sequence parallelism on 2 real gloo ranks against one-rank results (one torchrun launch for all)."""

from __future__ import annotations

import pytest
import torch

from inference.models.config import DiTConfig
from tests.distributed.rank_runs import run_ranks
from tests.tolerance import reorder_atol

WORLD = 2
CONFIG = DiTConfig.tiny(text_dim=32)  # the worker's DiT
DIT_TERMS = CONFIG.num_layers * max(CONFIG.dim, CONFIG.ffn_dim)  # the longest reordered sums, along the layers


def within_reorder_tolerance(result: dict, name: str, terms: int) -> bool:
    """The rank-vs-one-rank error `name` is within the reorder tolerance of its scale (tests/tolerance.py)."""
    return result[name] <= reorder_atol(torch.float32, result[f"{name}_scale"], terms)


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    return run_ranks("tests.distributed.ulysses_worker", tmp_path_factory.mktemp("ulysses"), WORLD, timeout=180)


@pytest.mark.slow
def test_ulysses_attention_on_two_ranks_equals_single_rank_attention(rank_results):
    """Each rank's token share of the Ulysses output equals the same rows of one-rank attention."""
    for result in rank_results:
        assert result["world_size"] == WORLD
        assert within_reorder_tolerance(result, "attention", terms=8 + 10), result  # head_dim + keys


@pytest.mark.slow
def test_indivisible_head_count_is_a_clear_error(rank_results):
    """Three heads over a Ulysses size of 2 raise a ValueError naming both numbers."""
    for result in rank_results:
        message = result["indivisible_heads"]
        assert "3 attention heads" in message and "Ulysses size of 2" in message


@pytest.mark.slow
def test_ulysses_fsdp_dit_matches_one_rank_across_chunks_and_slots(rank_results):
    """A Ulysses+FSDP2 DiT on 2 ranks gives the one-rank flow and caches for two slots over three chunks (its
    cache updates keys-only: they leave the keys of the one rank's full forwards)."""
    for result in rank_results:
        assert result["local_heads"] == 2  # each rank caches half of the 4 heads
        assert result["keys_only_updates"] == 3 and result["bf16"]["keys_only_updates"] == 3
        for name in ("flow", "cache_k", "cache_v"):
            assert within_reorder_tolerance(result, name, DIT_TERMS), (name, result)


@pytest.mark.slow
def test_bf16_dit_with_float32_islands_shards_and_matches_one_rank(rank_results):
    """A bf16 DiT whose time embedding, time projection and head stay float32 runs under Ulysses+FSDP2 on 2 ranks,
    keeps the islands float32 there, and matches one rank to bf16 rounding."""
    for result in rank_results:
        bf16 = result["bf16"]
        assert bf16["islands_float32"] and result["islands_float32"]
        for name in ("flow", "cache_k", "cache_v"):
            assert bf16[name] <= reorder_atol(torch.bfloat16, bf16[f"{name}_scale"], CONFIG.num_layers), (name, bf16)

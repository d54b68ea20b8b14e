"""Ulysses sequence parallelism on 2 real gloo ranks against one-rank results (one torchrun launch for all)."""

from __future__ import annotations


import pytest

from tests.distributed.rank_runs import run_ranks

WORLD = 2


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    return run_ranks("tests.distributed.ulysses_worker", tmp_path_factory.mktemp("ulysses"), WORLD, timeout=180)


@pytest.mark.slow
def test_ulysses_attention_on_two_ranks_equals_single_rank_attention(rank_results):
    """Each rank's token share of the Ulysses output equals the same rows of one-rank attention."""
    for result in rank_results:
        assert result["world_size"] == WORLD
        assert result["attention_error"] <= 1e-6


@pytest.mark.slow
def test_indivisible_head_count_is_a_clear_error(rank_results):
    """Three heads over a Ulysses size of 2 raise a ValueError naming both numbers."""
    for result in rank_results:
        message = result["indivisible_heads"]
        assert "3 attention heads" in message and "Ulysses size of 2" in message


@pytest.mark.slow
def test_ulysses_fsdp_dit_matches_one_rank_across_chunks_and_slots(rank_results):
    """A Ulysses+FSDP2 DiT on 2 ranks gives the one-rank flow and caches for two slots over three chunks."""
    for result in rank_results:
        assert result["local_heads"] == 2  # each rank caches half of the 4 heads
        assert result["flow"] <= 1e-5
        assert result["cache_k"] <= 1e-5 and result["cache_v"] <= 1e-5

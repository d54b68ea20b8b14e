"""Ulysses sequence parallelism on 2 real gloo ranks against one-rank results (one torchrun launch for all)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORLD = 2


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ulysses")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "-m", "tests.distributed.ulysses_worker", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(WORLD)]


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

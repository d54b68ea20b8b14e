"""Only rank 0 of a lingbot-fast engine group decodes frames (2 real torchrun ranks, Ulysses 2 + FSDP2)."""

from __future__ import annotations

import pytest

from tests.distributed.rank_runs import run_ranks
from tests.tolerance import FRAME_LEVELS

WORLD = 2


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    return run_ranks("tests.distributed.decode_worker", tmp_path_factory.mktemp("decode"), WORLD, timeout=300)


@pytest.mark.slow
def test_follower_runs_no_decode_and_holds_no_decoder(rank_results):
    """Rank 1, built as the engine process builds it, returns chunks of (0, H, W, 3) frames and its open session
    holds no decoder state."""
    served = rank_results[1]["served"]
    assert served["decode"] is False
    assert [o["frames_shape"] for o in served["outputs"]] == [[0, 32, 48, 3]] * 3
    assert served["sessions"] == 1 and served["decoders"] == [False]


@pytest.mark.slow
def test_follower_that_decodes_returns_frames(rank_results):
    """With decode left on (the old behaviour), rank 1 returns full chunks and keeps a decoder: the flag is what
    differs."""
    every = rank_results[1]["every"]
    assert every["decode"] is True
    assert [o["frames_shape"][0] for o in every["outputs"]] == [9, 12, 12]
    assert every["decoders"] == [True]


@pytest.mark.slow
def test_rank0_frames_unchanged_and_match_one_rank(rank_results):
    """Rank 0's frames are bit-identical to the run where every rank decodes, and match the one-rank engine."""
    leader = rank_results[0]
    assert leader["shapes"] == [[9, 32, 48, 3], [12, 32, 48, 3], [12, 32, 48, 3]]
    assert leader["same_as_every_rank_decoding"]
    assert leader["max_diff_vs_single"] <= FRAME_LEVELS, leader

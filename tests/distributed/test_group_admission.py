"""A 2-rank lingbot-fast group: admission agreed by every rank, and a slow first decode on rank 0 survived."""

from __future__ import annotations

import pytest

from tests.distributed.rank_runs import run_ranks


@pytest.mark.slow
def test_a_session_that_does_not_fit_one_rank_is_refused_by_the_whole_group(tmp_path):
    """Rank 1 has room for one session: the second open and a test frame get 'busy' naming rank 1 on rank 0,
    both ranks hold the same sessions throughout, and after a close the second session opens everywhere."""
    rank0, rank1 = run_ranks("tests.distributed.admission_worker", tmp_path, 2, timeout=300)
    for refused in (rank0["second"], rank0["test_frame"]):
        assert refused is not None and refused["code"] == "busy"
        assert "rank 1:" in refused["message"] and "--memory-limit-gb" in refused["message"]
    assert "a test frame" in rank0["test_frame"]["message"]
    assert rank0["after_close"] is None
    assert rank0["sessions"] == rank1["sessions"] == ["b"]


@pytest.mark.slow
def test_a_slow_first_decode_on_rank0_does_not_fail_the_group(tmp_path):
    """With an 8 s collective timeout and a 16 s first decode on rank 0, both chunks and a test frame complete:
    the follower waits at the long barrier after the size's first chunk instead of timing out."""
    rank0, rank1 = run_ranks("tests.distributed.barrier_worker", tmp_path, 2, timeout=300)
    assert rank0["frames"] == [9, 12] and rank0["seconds"] >= 16.0
    assert rank0["test_frame"] == [32, 48, 3] and rank1["followed"]

"""Admission in a 2-rank lingbot-fast group: every rank checks its own memory and all refuse together."""

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

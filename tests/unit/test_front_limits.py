"""Per-connection token buckets and the repeated-log-line filter, on a fake clock."""

import logging

from server.limits import MessageBudget, TokenBucket
from server.log_limit import RepeatFilter


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_bucket_spends_its_burst_then_refills_at_its_rate():
    """Burst 3 at 0.5/s: three takes pass, the fourth waits two seconds for its token."""
    clock = Clock()
    bucket = TokenBucket(0.5, 3, clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.t = 1.9
    assert not bucket.take()
    clock.t = 2.0
    assert bucket.take()


def test_refusals_are_reported_once_a_second():
    """should_report is true for the first refusal and then at most once per second."""
    clock = Clock()
    bucket = TokenBucket(1.0, 1, clock)
    assert [bucket.should_report(), bucket.should_report()] == [True, False]
    clock.t = 1.0
    assert bucket.should_report()


def test_a_sustained_flood_is_abusive_and_a_short_burst_is_not():
    """At rate 2/s, 5 refusals in 5 s are tolerated; more than 10 make the connection abusive."""
    clock = Clock()
    budget = MessageBudget(2.0, 2, clock)
    for _ in range(7):
        budget.take()
    assert not budget.abusive
    for _ in range(10):
        budget.take()
    assert budget.abusive
    clock.t = 6.0
    budget.take()
    budget.take()
    budget.take()
    assert not budget.abusive  # the old refusals left the window


def _record(msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, args, None)


def test_a_repeated_log_line_passes_once_per_window_and_then_counts_what_was_left_out():
    """The same template logs once per 10 s; the next line says how many were dropped; another template passes."""
    clock = Clock()
    flt = RepeatFilter(10.0, clock)
    assert flt.filter(_record("socket.accept() out of system resource %s", 1))
    assert not any(flt.filter(_record("socket.accept() out of system resource %s", i)) for i in range(500))
    assert flt.filter(_record("another problem"))
    clock.t = 10.0
    again = _record("socket.accept() out of system resource %s", 2)
    assert flt.filter(again) and "500 similar lines" in again.getMessage()

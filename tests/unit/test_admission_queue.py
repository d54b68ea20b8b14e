"""Admission arithmetic and the bounded FIFO of waiting inits, without a server."""

import asyncio

import pytest

from server.admission import AdmissionQueue, Waiting, fits_capacity, load_with


def entry(owner: str, told: list, loop: asyncio.AbstractEventLoop) -> Waiting:
    return Waiting(owner=owner, size="832*480", future=loop.create_future(),
                   notify=lambda p: told.append((owner, p)))


def test_capacity_counts_each_open_session_as_a_share_of_the_engine():
    """With capacity 2.5 for one size and 5 for another, sessions fit while their shares stay within 0.9."""
    capacity = {"big": 2.5, "small": 5.0}
    assert fits_capacity([], "big", {"big": 0.5})  # the first session always fits
    assert fits_capacity(["small", "small"], "big", capacity)  # 0.2 + 0.2 + 0.4
    assert not fits_capacity(["small", "small", "big"], "small", capacity)  # 0.8 + 0.2 > 0.9
    assert fits_capacity(["big"], "big", capacity)  # 0.4 + 0.4
    assert not fits_capacity(["big", "big"], "big", capacity)  # 1.2


def test_an_unmeasured_session_holds_the_next_init_and_an_unmeasured_size_counts_as_the_costliest():
    """Nothing is admitted next to a session not measured yet; a new size is charged like the costliest open one."""
    capacity = {"big": 2.5, "small": 5.0}
    assert not fits_capacity(["small", "fresh"], "small", capacity)
    assert fits_capacity(["small"], "unmeasured", capacity)  # 0.2 + 0.2
    assert not fits_capacity(["big", "small"], "unmeasured", capacity)  # 0.6 + 0.4
    # the load /status records with each admission is the one judged here
    assert load_with(["big", "small"], "unmeasured", capacity) == pytest.approx(1.0)
    assert load_with(["small"], "big", capacity) == pytest.approx(0.6)
    assert load_with([], "unmeasured", capacity) == 0.0


def test_queue_numbers_from_one_refuses_past_its_bound_and_moves_everyone_up():
    """Entries get positions 1, 2; a third is refused at bound 2; removing the first tells the second it is 1."""
    loop = asyncio.new_event_loop()
    try:
        told: list = []
        queue = AdmissionQueue(2)
        first = entry("a", told, loop)
        assert queue.add(first) == 1 and queue.add(entry("b", told, loop)) == 2
        assert queue.add(entry("c", told, loop)) is None and len(queue) == 2
        assert queue.remove("a") and not queue.remove("a")
        assert first.future.cancelled()  # whoever awaited it learns it left the queue
        assert told == [("a", 1), ("b", 2), ("b", 1)]
        assert queue.pop_head().owner == "b" and queue.head() is None
    finally:
        loop.close()

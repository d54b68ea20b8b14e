"""Admission arithmetic and the bounded FIFO of waiting inits, without a server."""

from server.admission import AdmissionQueue, Waiting, fits_capacity


def entry(owner: str, told: list) -> Waiting:
    return Waiting(owner=owner, size="832*480", start=lambda: None, notify=lambda p: told.append((owner, p)))


def test_capacity_counts_each_open_session_as_a_share_of_the_engine():
    """With capacity 2 for one size and 4 for another, two small plus one large session fill the engine."""
    capacity = {"big": 2.0, "small": 4.0}
    assert fits_capacity([], "big", {"big": 0.5})  # the first session always fits
    assert fits_capacity(["small", "small"], "big", capacity)
    assert not fits_capacity(["small", "small", "big"], "small", capacity)
    assert fits_capacity(["big", "big"], "unmeasured", capacity) is False
    assert fits_capacity(["small"], "unmeasured", capacity)


def test_queue_numbers_from_one_refuses_past_its_bound_and_moves_everyone_up():
    """Entries get positions 1, 2; a third is refused at bound 2; removing the first tells the second it is 1."""
    told: list = []
    queue = AdmissionQueue(2)
    assert queue.add(entry("a", told)) == 1 and queue.add(entry("b", told)) == 2
    assert queue.add(entry("c", told)) is None and len(queue) == 2
    assert queue.remove("a") and not queue.remove("a")
    assert told == [("a", 1), ("b", 2), ("b", 1)]
    assert queue.pop_head().owner == "b" and queue.head() is None

"""Engine task scheduling between chunks: gaps, turns, coalescing, bounds, forced slices, lead (given numbers, no clock)."""

import pytest

from inference.engine.base import EngineTask
from inference.engine.tasks import OPEN, PROMPT, TEST_FRAME, TaskItem, TaskLimits, TaskQueue, TaskRefused

NOW = 1000.0


class Work(EngineTask):
    """A task that finishes after `slices` steps and remembers whether it was cancelled."""

    def __init__(self, slices: int = 1):
        self.left = slices
        self.cancelled = False

    def step(self) -> bool:
        self.left -= 1
        if self.left == 0:
            self.result = "done"
        return self.left == 0

    def cancel(self) -> None:
        self.cancelled = True


def item(kind: str, key: str, owner: str, slices: int = 1, at: float = NOW) -> TaskItem:
    return TaskItem(kind=kind, key=key, owner=owner, task=Work(slices), arrived_at=at)


def limits(**kw) -> TaskLimits:
    base = dict(first_guess_s={OPEN: 0.3, PROMPT: 0.1, TEST_FRAME: 0.3}, margin_s=0.02)
    return TaskLimits(**{**base, **kw})


def run(queue: TaskQueue, picked: TaskItem, seconds: float) -> bool:
    done = picked.task.step()
    queue.ran(picked, seconds, done)
    return done


def test_a_slice_runs_only_when_it_fits_before_the_next_chunk():
    """A 0.3 s open waits while the next chunk must start within 0.3 s and runs once 0.32 s are free."""
    queue = TaskQueue(limits())
    queue.add(item(OPEN, "s1", "conn1"))
    assert queue.pick(NOW, slack_s=0.0) is None
    assert queue.pick(NOW, slack_s=0.3) is None
    assert queue.pick(NOW, slack_s=0.32).key == "s1"
    assert queue.pick(NOW, slack_s=float("inf")).key == "s1"


def test_a_cheap_task_uses_a_gap_too_small_for_an_expensive_one():
    """With 0.15 s free, a waiting prompt (0.1 s) runs although an open (0.3 s) queued first."""
    queue = TaskQueue(limits())
    queue.add(item(OPEN, "s1", "conn1"))
    queue.add(item(PROMPT, "s2", "s2"))
    assert queue.pick(NOW, slack_s=0.15).kind == PROMPT


def test_owners_take_turns():
    """Three test frames of owner A and one of B: slices go A, B, A, A (B is not made to wait behind all of A)."""
    queue = TaskQueue(limits(max_test_frames=10))
    for i in range(3):
        queue.add(item(TEST_FRAME, f"a{i}", "A"))
    queue.add(item(TEST_FRAME, "b0", "B"))
    order = []
    while (picked := queue.pick(NOW, float("inf"))) is not None:
        order.append(picked.owner)
        run(queue, picked, 0.01)
    assert order == ["A", "B", "A", "A"]


def test_a_sliced_task_keeps_its_place_in_its_owner_queue_between_turns():
    """A three-slice open of A alternates with B's prompts and finishes after its third slice."""
    queue = TaskQueue(limits())
    queue.add(item(OPEN, "a", "A", slices=3))
    queue.add(item(PROMPT, "b1", "B"))
    order = []
    while (picked := queue.pick(NOW, float("inf"))) is not None:
        order.append(picked.key)
        if picked.owner == "B" and picked.key == "b1":
            run(queue, picked, 0.01)
            queue.add(item(PROMPT, "b2", "B"))
            continue
        run(queue, picked, 0.01)
    assert order == ["a", "b1", "a", "b2", "a"]
    assert len(queue) == 0


def test_prompts_coalesce_latest_wins():
    """A second prompt for a session replaces the pending one, which is cancelled; one stays pending."""
    queue = TaskQueue(limits())
    first = item(PROMPT, "s", "s")
    queue.add(first)
    second = TaskItem(kind=PROMPT, key="s", owner="s", task=Work(), arrived_at=NOW, info={"prompt": "night"})
    assert queue.add(second) == [first]
    assert first.task.cancelled and len(queue) == 1
    assert queue.pick(NOW, float("inf")).info["prompt"] == "night"


def test_one_pending_open_per_owner():
    """A connection's newer open replaces (and cancels) its pending one; another connection's open stays."""
    queue = TaskQueue(limits())
    old, other = item(OPEN, "s1", "conn1"), item(OPEN, "t1", "conn2")
    queue.add(old)
    queue.add(other)
    assert queue.add(item(OPEN, "s2", "conn1")) == [old]
    assert old.task.cancelled and not other.task.cancelled
    assert sorted(i.key for i in (queue.get(OPEN, "s2"), queue.get(OPEN, "t1"))) == ["s2", "t1"]
    assert queue.get(OPEN, "s1") is None


def test_test_frames_are_bounded_and_cancellable():
    """A third test frame is refused; cancelling one (its HTTP request left) frees a place and cancels its work."""
    queue = TaskQueue(limits(max_test_frames=2))
    a, b = item(TEST_FRAME, "r1", "ip1"), item(TEST_FRAME, "r2", "ip2")
    queue.add(a)
    queue.add(b)
    with pytest.raises(TaskRefused):
        queue.add(item(TEST_FRAME, "r3", "ip3"))
    assert queue.cancel(TEST_FRAME, "r1") is a and a.task.cancelled
    queue.add(item(TEST_FRAME, "r3", "ip3"))
    assert queue.count(TEST_FRAME) == 2


def test_closing_a_session_cancels_its_open_and_prompt():
    """cancel_key drops and cancels every task keyed by the session."""
    queue = TaskQueue(limits())
    opening, prompt = item(OPEN, "s", "conn"), item(PROMPT, "s", "s")
    queue.add(opening)
    queue.add(prompt)
    assert set(queue.cancel_key("s")) == {opening, prompt}
    assert opening.task.cancelled and prompt.task.cancelled and len(queue) == 0


def test_an_open_that_never_finds_a_gap_runs_after_its_longest_wait_but_a_test_frame_never_does():
    """With no slack at all, an open is forced after max_wait; a test frame waits forever (its request times out)."""
    queue = TaskQueue(limits(max_wait_s={OPEN: 4.0, PROMPT: 2.0, TEST_FRAME: None}))
    queue.add(item(TEST_FRAME, "r", "ip", at=NOW))
    queue.add(item(OPEN, "s", "conn", at=NOW + 1))
    assert queue.pick(NOW + 4.9, slack_s=0.0) is None
    assert queue.next_overdue_s(NOW + 4.9) == pytest.approx(0.1)
    assert queue.pick(NOW + 5.0, slack_s=0.0).kind == OPEN
    queue.cancel(OPEN, "s")
    assert queue.pick(NOW + 100, slack_s=0.0) is None and queue.next_overdue_s(NOW) == float("inf")


def test_slice_cost_rises_at_once_and_falls_slowly():
    """A 0.5 s slice raises the estimate to 0.5 s; a 0.1 s slice then lowers it by a tenth of the difference."""
    queue = TaskQueue(limits())
    first = item(OPEN, "a", "A", slices=2)
    queue.add(first)
    run(queue, queue.pick(NOW, float("inf")), 0.5)
    assert queue.expected_s(OPEN) == pytest.approx(0.5)
    run(queue, queue.pick(NOW, float("inf")), 0.1)
    assert queue.expected_s(OPEN) == pytest.approx(0.46)


def test_wanted_lead_opens_a_gap_for_a_blocked_task_only():
    """A blocked 0.3 s task asks for 0.32 s of extra lead (capped by max_lead_s); none when it fits."""
    queue = TaskQueue(limits(max_lead_s=0.25))
    assert queue.wanted_lead(NOW, slack_s=0.0) == 0.0
    queue.add(item(PROMPT, "s", "s"))
    assert queue.wanted_lead(NOW, slack_s=0.0) == pytest.approx(0.12)
    assert queue.wanted_lead(NOW, slack_s=0.5) == 0.0
    queue.add(item(OPEN, "o", "conn"))
    assert queue.wanted_lead(NOW, slack_s=0.0) == pytest.approx(0.25)


def test_a_bigger_test_frame_is_expected_to_cost_in_proportion_and_teaches_the_unit_cost():
    """A 10-unit test frame is expected to take 10 unit costs, and its measured time is learned per unit."""
    queue = TaskQueue(limits(first_guess_s={OPEN: 0.3, PROMPT: 0.1, TEST_FRAME: 0.2}, max_lead_s=5.0))
    big = TaskItem(kind=TEST_FRAME, key="big", owner="ip", task=Work(), arrived_at=NOW, scale=10.0)
    queue.add(big)
    assert queue.pick(NOW, slack_s=1.0) is None and queue.wanted_lead(NOW, 0.0) == pytest.approx(2.02)
    run(queue, queue.pick(NOW, slack_s=2.5), 3.0)
    assert queue.expected_s(TEST_FRAME) == pytest.approx(0.3) and queue.expected_s(TEST_FRAME, 10.0) == pytest.approx(3.0)


def test_the_overdue_task_is_the_longest_waiting_forcible_one():
    """overdue() names the oldest open or prompt past its wait, never a test frame, and nothing before."""
    queue = TaskQueue(limits(max_wait_s={OPEN: 4.0, PROMPT: 2.0, TEST_FRAME: None}, max_test_frames=5))
    queue.add(item(TEST_FRAME, "r", "ip", at=NOW - 100))
    queue.add(item(PROMPT, "p", "s", at=NOW))
    queue.add(item(OPEN, "o", "c", at=NOW - 1))
    assert queue.overdue(NOW + 1.9) is None
    assert queue.overdue(NOW + 2.0).key == "p"
    assert queue.overdue(NOW + 3.0).key == "o"

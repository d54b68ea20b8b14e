"""The chunk scheduler (EDF, same-signature batches) and the batch-limit learner, fed with given numbers."""

from inference.engine.batching import BatchLearner, signature_loads
from inference.engine.scheduler import ChunkScheduler, PendingStep
from inference.protocol import StepChunk

NOW = 1000.0


def step(session_id: str, deadline: float, signature: str = "a", arrived_at: float = NOW) -> PendingStep:
    request = StepChunk(session_id=session_id, chunk_index=0, poses=b"", keys=b"", num_frames=4,
                        deadline=deadline, requested_at=arrived_at)
    return PendingStep(request=request, signature=signature, arrived_at=arrived_at)


def trained(times: dict[int, float], *, limit: int = 1, max_batch: int = 8, signature: str = "a") -> BatchLearner:
    """A learner that has seen three on-time steps of each given size, with the given limit."""
    learner = BatchLearner(max_batch=max_batch)
    for size, seconds in times.items():
        for _ in range(3):
            learner.record(signature, size, seconds, slack_s=10.0)
    learner.signatures[signature].limit = limit
    return learner


def ids(batch: list[PendingStep]) -> list[str]:
    return [s.request.session_id for s in batch]


def test_earliest_deadline_goes_first():
    """With one session per step, requests come out in deadline order whatever their arrival order."""
    sched = ChunkScheduler()
    for sid, deadline in (("late", NOW + 3), ("soon", NOW + 1), ("mid", NOW + 2)):
        sched.submit(step(sid, deadline))
    assert [ids(sched.next_batch(NOW)) for _ in range(3)] == [["soon"], ["mid"], ["late"]]
    assert sched.next_batch(NOW) == []


def test_a_newer_request_replaces_the_pending_one_of_its_session():
    """Submitting twice for one session keeps one pending request, the newer one."""
    sched = ChunkScheduler()
    assert sched.submit(step("s", NOW + 1)) is None
    assert sched.submit(step("s", NOW + 2)).request.deadline == NOW + 1
    assert len(sched) == 1 and sched.next_batch(NOW)[0].request.deadline == NOW + 2


def test_due_sessions_of_one_signature_share_a_step_up_to_the_limit():
    """Three due sessions of one signature with a learned limit of 2 run as a batch of 2, then 1."""
    sched = ChunkScheduler(learner=trained({1: 0.10, 2: 0.12}, limit=2, max_batch=2))
    for i in range(3):
        sched.submit(step(f"s{i}", NOW + 0.2 + i * 0.01))
    assert ids(sched.next_batch(NOW)) == ["s0", "s1"]
    assert ids(sched.next_batch(NOW)) == ["s2"]


def test_a_session_that_is_not_due_or_would_make_the_head_late_waits():
    """A request due far later stays out, and so does one whose batch would end after the head's deadline."""
    sched = ChunkScheduler(learner=trained({1: 0.10, 2: 0.12}, limit=2, max_batch=2))
    sched.submit(step("head", NOW + 0.5))
    sched.submit(step("later", NOW + 5.0))
    assert ids(sched.next_batch(NOW)) == ["head"]
    sched.submit(step("tight", NOW + 0.11))  # alone it makes it (0.10 s); a batch of 2 takes 0.12 s
    sched.submit(step("other", NOW + 0.15))
    assert ids(sched.next_batch(NOW)) == ["tight"]


def test_two_signatures_never_share_a_step_and_both_progress():
    """Interleaved deadlines of two signatures give one-signature batches, and every request is served."""
    learner = trained({1: 0.01, 2: 0.012, 3: 0.014}, limit=3, signature="a")
    for _ in range(3):
        learner.record("b", 1, 0.01, slack_s=10.0)
        learner.record("b", 2, 0.012, slack_s=10.0)
    learner.signatures["b"].limit = 2
    sched = ChunkScheduler(learner=learner)
    for i in range(6):
        sched.submit(step(f"{'ab'[i % 2]}{i}", NOW + 0.01 * (i + 1), signature="ab"[i % 2]))
    served = []
    while batch := sched.next_batch(NOW):
        assert len({s.signature for s in batch}) == 1
        served += ids(batch)
    assert sorted(served) == ["a0", "a2", "a4", "b1", "b3", "b5"]


def test_equal_deadlines_serve_the_cheaper_signature_first():
    """At the same deadline the signature with the lower per-session cost goes first."""
    learner = trained({1: 0.5}, signature="heavy")
    for _ in range(3):
        learner.record("light", 1, 0.05, slack_s=10.0)
    sched = ChunkScheduler(learner=learner)
    sched.submit(step("h", NOW + 1, signature="heavy", arrived_at=NOW - 1))
    sched.submit(step("l", NOW + 1, signature="light"))
    assert ids(sched.next_batch(NOW)) == ["l"]


def test_limit_starts_at_one_and_grows_while_batching_pays():
    """Measured steps where two sessions cost 1.2x one and three 1.4x one take the limit from 1 to 3."""
    learner = BatchLearner(max_batch=3)
    cost = {1: 0.10, 2: 0.12, 3: 0.14}
    assert learner.limit("a") == 1
    for _ in range(30):
        size = learner.batch_cap("a")
        learner.record("a", size, cost[size], slack_s=1.0)
    assert learner.limit("a") == 3
    assert learner.snapshot("a")["step_ms"] == {1: 100.0, 2: 120.0, 3: 140.0}


def test_limit_stays_at_one_when_a_batch_costs_as_much_as_its_sessions_alone():
    """When two sessions take twice one session's time the probe does not raise the limit."""
    learner = BatchLearner(max_batch=4)
    for _ in range(30):
        size = learner.batch_cap("a")
        learner.record("a", size, 0.1 * size, slack_s=1.0)
    assert learner.limit("a") == 1


def test_limit_shrinks_when_the_larger_batch_stops_paying():
    """A limit of 2 falls back to 1 once batches of 2 are measured as slow as two single steps."""
    learner = trained({1: 0.10, 2: 0.12}, limit=2)
    for _ in range(10):
        learner.record("a", 2, 0.25, slack_s=1.0)
    assert learner.limit("a") == 1


def test_limit_shrinks_when_a_batch_makes_a_session_late():
    """A batch of 3 that ends after the tightest deadline, where one session alone would not, lowers the limit."""
    learner = trained({1: 0.10, 2: 0.12, 3: 0.14}, limit=3)
    learner.record("a", 3, 0.14, slack_s=0.13)
    assert learner.limit("a") == 2
    assert learner.snapshot("a")["late_batches"] == 1


def test_capacity_is_chunk_period_over_time_per_session():
    """A 0.25 s chunk period with 0.10 s per session at limit 1 holds 2.5 sessions; batching raises it."""
    learner = trained({1: 0.10})
    [load] = signature_loads(learner, {"a": "832*480"}, {"a": 1}, chunk_period_s=0.25)
    assert (load["capacity"], load["batch_limit"], load["size"]) == (2.5, 1, "832*480")
    learner.signatures["a"].limit = 2
    learner.record("a", 2, 0.125, slack_s=1.0)
    [load] = signature_loads(learner, {"a": "832*480"}, {"a": 2}, chunk_period_s=0.25)
    assert load["capacity"] == 4.0


def test_a_penalty_for_its_own_forced_work_ranks_a_session_after_others():
    """A session whose own forced task took 0.3 s is ranked as if due 0.3 s later, so others keep their timing."""
    sched = ChunkScheduler()
    payer = step("payer", NOW + 0.1)
    payer.penalty_s = 0.3
    sched.submit(payer)
    sched.submit(step("other", NOW + 0.2))
    assert [ids(sched.next_batch(NOW)) for _ in range(2)] == [["other"], ["payer"]]

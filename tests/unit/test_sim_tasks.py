"""The sim engine's sliced tasks in-process: worlds build in many small steps, cancel leaves nothing, newest prompt wins."""

from __future__ import annotations

import numpy as np
import pytest

from inference.engine.base import ChunkWork, EngineUserError, SessionSpec
from inference.sim import Scene, SimEngine, Terrain, look_from_prompt

W, H = 832, 480


def spec(session_id: str, prompt: str = "", seed: int = 3) -> SessionSpec:
    return SessionSpec(session_id=session_id, prompt=prompt, seed=seed, width=W, height=H)


def frame(engine: SimEngine, session_id: str, z: float = 0.0) -> np.ndarray:
    pose = np.eye(4)[None].copy()
    pose[0, 2, 3] = z
    work = ChunkWork(session_id=session_id, chunk_index=0, poses=pose, keys=np.zeros((1, 8), np.float32))
    return engine.generate([work])[0].frames[0]


def run(task) -> tuple[object, int]:
    """(result, number of step calls) of a task driven to its end."""
    steps = 1
    while not task.step():
        steps += 1
    return task.result, steps


def test_sliced_builds_equal_whole_builds():
    """A terrain and scene built in slices hold exactly the arrays of the one-call build."""
    gen = Terrain.in_slices(5)
    slices = 0
    while True:
        try:
            next(gen)
            slices += 1
        except StopIteration as done:
            sliced = done.value
            break
    whole = Terrain(5)
    assert slices >= 8
    for name in ("height", "normal", "cavity", "patch", "speckle", "detail", "cloud", "crowns"):
        np.testing.assert_array_equal(getattr(sliced, name), getattr(whole, name), err_msg=name)
    assert sliced.origin == whole.origin
    look = look_from_prompt("snowy forest at sunset")
    np.testing.assert_array_equal(Scene(sliced, look).texels, Scene(whole, look).texels)


def test_open_task_takes_many_steps_then_opens_the_session():
    """Opening a new seed's world takes many bounded steps; the session then renders like open_session's."""
    engine = SimEngine(workers=0)
    signature, steps = run(engine.open_task(spec("sliced", seed=21)))
    assert signature == f"sim:{W}x{H}:4" and steps >= 10
    plain = SimEngine(workers=0)
    plain.open_session(spec("plain", seed=21))
    np.testing.assert_array_equal(frame(engine, "sliced", 0.5), frame(plain, "plain", 0.5))
    # A second session on the same seed and look finds the painted scene: one step.
    assert run(engine.open_task(spec("again", seed=21)))[1] == 1


def test_cancelled_open_leaves_the_engine_as_before():
    """Cancelling an open midway leaves no session, no cached scene and no build behind."""
    engine = SimEngine(workers=0)
    task = engine.open_task(spec("gone", seed=22))
    for _ in range(5):
        assert not task.step()
    task.cancel()
    assert not engine.worlds.entries and not engine.worlds.builds
    with pytest.raises(KeyError):
        frame(engine, "gone")


def test_reopen_keeps_the_old_world_until_the_new_one_is_built():
    """An open for a live session id keeps the old world rendering until the task finishes."""
    engine = SimEngine(workers=0)
    engine.open_session(spec("live", prompt="sunny day", seed=23))
    before = frame(engine, "live")
    task = engine.open_task(spec("live", prompt="night", seed=24))
    assert not task.step() and not task.step()
    np.testing.assert_array_equal(frame(engine, "live"), before)
    run(task)
    assert frame(engine, "live").mean() < 0.6 * before.mean()  # the night world took over


def test_bad_requests_fail_on_the_first_step():
    """A bad size or start image raises EngineUserError from step(), before any building."""
    engine = SimEngine(workers=0)
    bad = SessionSpec(session_id="x", prompt="", seed=1, width=720, height=480)
    with pytest.raises(EngineUserError):
        engine.open_task(bad).step()
    with pytest.raises(EngineUserError):
        engine.open_task(SessionSpec(session_id="y", prompt="", seed=1, width=W, height=H,
                                     image=np.zeros((8, 8), np.uint8))).step()
    with pytest.raises(EngineUserError):
        engine.test_frame_task("", 1, 15, 100).step()
    assert not engine.worlds.builds


def test_newest_prompt_task_wins_whatever_order_they_finish():
    """Of two prompt changes, the later one stays even when the earlier finishes last."""
    engine = SimEngine(workers=0)
    engine.open_session(spec("p", prompt="sunny", seed=25))
    night = engine.prompt_task("p", "night")
    snow = engine.prompt_task("p", "snowy winter")
    run(snow)
    run(night)
    ref = SimEngine(workers=0)
    ref.open_session(spec("r", prompt="snowy winter", seed=25))
    np.testing.assert_array_equal(frame(engine, "p"), frame(ref, "r"))


def test_cancelled_prompt_task_changes_nothing():
    """A prompt change cancelled midway leaves the session's look as it was."""
    engine = SimEngine(workers=0)
    engine.open_session(spec("c", prompt="sunny", seed=26))
    before = frame(engine, "c")
    task = engine.prompt_task("c", "sunset")
    task.step()
    task.cancel()
    np.testing.assert_array_equal(frame(engine, "c"), before)
    assert len(engine.worlds.entries) == 1
    with pytest.raises(KeyError):
        engine.prompt_task("nobody", "night")


def test_test_frame_task_matches_plain_call():
    """The sliced test frame is the plain render_test_frame's picture."""
    engine = SimEngine(workers=0)
    result, steps = run(engine.test_frame_task("dawn", 7, 101, 37))
    assert steps >= 3 and result.shape == (37, 101, 3)
    np.testing.assert_array_equal(result, engine.render_test_frame("dawn", 7, 101, 37))


def test_a_process_that_paints_asks_numpy_for_small_pages():
    """Painting allocates fresh 4-16 MB arrays each slice; huge pages made slices 5x longer where faults are slow."""
    from inference.sim.render import RenderConfig
    from inference.sim.worlds import LocalWorlds, numpy_huge_page_switch, paint_on_small_pages

    _set_madvise_hugepage = numpy_huge_page_switch()
    assert _set_madvise_hugepage is not None, "this numpy has no huge-page switch"
    before = _set_madvise_hugepage(True)
    try:
        LocalWorlds(RenderConfig())
        assert _set_madvise_hugepage(True) is False, "LocalWorlds left numpy asking for huge pages"
        paint_on_small_pages()  # what each render worker does first
        assert _set_madvise_hugepage(before) is False
    finally:
        _set_madvise_hugepage(before)

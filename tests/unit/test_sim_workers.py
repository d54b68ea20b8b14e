"""The sim engine's render worker processes: same pictures as in-process, sliced tasks, no orphans, death is loud."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from inference.engine.base import ChunkWork, EngineUserError, SessionSpec
from inference.engine.frames import encode_jpeg
from inference.sim import SimEngine
from inference.sim.pool import SimWorkerError

REPO = Path(__file__).resolve().parents[2]
W, H = 832, 480


def walk(frames: int, start: float = 0.0) -> np.ndarray:
    poses = np.tile(np.eye(4), (frames, 1, 1))
    poses[:, 2, 3] = start + 0.05 * np.arange(frames)
    return poses


def work(session_id: str, poses: np.ndarray) -> ChunkWork:
    return ChunkWork(session_id=session_id, chunk_index=0, poses=poses, keys=np.zeros((len(poses), 8), np.float32))


def spec(session_id: str, prompt: str = "", seed: int = 3) -> SessionSpec:
    return SessionSpec(session_id=session_id, prompt=prompt, seed=seed, width=W, height=H)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a dead parent's reaper) counts as gone.
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def wait_gone(pids: list[int], seconds: float = 15.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.fixture(scope="module")
def pooled():
    engine = SimEngine(chunk_frames=4, workers=2)
    engine.warm_up()
    yield engine
    engine.close()


def test_worker_frames_are_the_in_process_frames(pooled):
    """Frames rendered and encoded by the workers are byte for byte the in-process frames' JPEGs."""
    local = SimEngine(chunk_frames=4, workers=0)
    for engine in (pooled, local):
        engine.open_session(spec("same", prompt="misty lake at dawn", seed=8))
    poses = walk(6, 1.0)
    poses[3:, :3, :3] = np.array([[0.94, 0, 0.34], [0, 1, 0], [-0.34, 0, 0.94]])  # a turn mid-chunk
    (out,) = pooled.generate([work("same", poses)])
    (ref,) = local.generate([work("same", poses)])
    assert out.frames.shape[0] == 0 and len(out.jpegs) == 6 and out.model_ms > 0
    assert out.jpegs == [encode_jpeg(f, pooled.jpeg_quality) for f in ref.frames]
    raw = pooled.render_test_frame("storm", 4, 333, 211)
    np.testing.assert_array_equal(raw, local.render_test_frame("storm", 4, 333, 211))
    pooled.close_session("same")


def test_batch_of_sessions_spreads_over_workers(pooled):
    """A batch of sessions comes back in order, each with its own world, from both workers."""
    for i in range(3):
        pooled.open_session(spec(f"b{i}", seed=30 + i))
    outs = pooled.generate([work(f"b{i}", walk(4)) for i in range(3)])
    assert [len(o.jpegs) for o in outs] == [4, 4, 4]
    assert len({o.jpegs[0] for o in outs}) == 3
    assert pooled.info().extra["render_workers"] == 2
    for i in range(3):
        pooled.close_session(f"b{i}")


def test_pooled_tasks_poll_workers_and_cancel_cleanly(pooled):
    """Opens, prompts and test frames complete by polling; a cancelled open leaves no scene behind."""
    task = pooled.open_task(spec("t", prompt="sunset", seed=41))
    steps = 1
    while not task.step():
        steps += 1
        pooled.worlds.collect(0.01)
    assert task.result == f"sim:{W}x{H}:4" and steps > 1
    gone = pooled.open_task(spec("gone", seed=42))
    gone.step()
    gone.cancel()
    deadline = time.monotonic() + 30
    while pooled.worlds.abandoned and time.monotonic() < deadline:
        pooled.worlds.collect(0.05)  # a cancelled build's late reply is cleaned up too
    assert not pooled.worlds.builds and not pooled.worlds.abandoned
    assert all(key[0] != 42 for key in pooled.worlds.entries)
    frame_task = pooled.test_frame_task("night", 41, 64, 48)
    while not frame_task.step():
        pooled.worlds.collect(0.01)
    assert frame_task.result[:2] == b"\xff\xd8"  # JPEG, encoded in the worker
    with pytest.raises(EngineUserError):
        pooled.test_frame_task("night", 41, 4000, 48).step()
    pooled.set_prompt("t", "night")
    assert len(pooled.generate([work("t", walk(1))])[0].jpegs) == 1
    pooled.close_session("t")


def test_killed_worker_is_an_engine_error():
    """SIGKILL on one worker makes the next chunk raise SimWorkerError naming that worker."""
    engine = SimEngine(workers=2)
    engine.warm_up()
    try:
        engine.open_session(spec("k", seed=9))
        victim = engine.worker_pids[1]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(SimWorkerError, match=str(victim)):
            for _ in range(10):  # the death is seen at the latest when a frame goes to that worker
                engine.generate([work("k", walk(4))])
    finally:
        engine.close()
    assert not wait_gone([victim])


def test_close_stops_the_workers():
    """engine.close() ends every worker process."""
    engine = SimEngine(workers=2)
    engine.warm_up()
    pids = engine.worker_pids
    assert len(pids) == 2 and all(alive(p) for p in pids)
    engine.close()
    assert not wait_gone(pids, 5)


def test_workers_exit_when_the_engine_process_is_killed():
    """Workers of an engine process that dies by SIGKILL exit on their own (no orphans)."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1])\n"
            "from inference.sim import SimEngine\n"
            "if __name__ == '__main__':\n"
            "    e = SimEngine(workers=2); e.warm_up()\n"
            "    print(*e.worker_pids, flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    assert not wait_gone(pids), "render workers outlived their engine"


def test_engine_flag_sets_the_worker_count():
    """--sim-workers and --jpeg-quality reach the sim engine; without the flag it is one worker per CPU."""
    from inference.engine.__main__ import build_engine, parse_args

    engine = build_engine(parse_args(["--endpoint", "tcp://127.0.0.1:1", "--sim-workers", "0",
                                      "--jpeg-quality", "70"]), None)
    assert engine.workers == 0 and engine.jpeg_quality == 70
    default = build_engine(parse_args(["--endpoint", "tcp://127.0.0.1:1"]), None)
    assert default.workers == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="-1"):
        SimEngine(workers=-1)

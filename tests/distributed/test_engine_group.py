"""The server with a tiny lingbot-fast engine group of 2 torchrun ranks (Ulysses 2, FSDP2): same frames, rank loss."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint
from tests.server.serverkit import receive, start_session

# generous heartbeat limit: two ranks import torch and rendezvous on a shared 2-core machine
GROUP_ENV = dict(ENGINE="lingbot-fast", ENGINE_STEP_TIMEOUT_S="120", RESTART_BACKOFF_MAX_S="1",
                 HEARTBEAT_TIMEOUT_S="30")
FRAMES = 9  # the first chunk and the next one


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "lingbot-tiny", seed=2, sizes=("48*32",))


def pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int16)


def group_server(server_factory, tiny_dir):
    return server_factory(MODEL_DIR=str(tiny_dir), NUM_GPUS="2", ENGINE_ARGS="--dit-fsdp --t5-fsdp", **GROUP_ENV)


def worker_pid(launcher_pid: int, rank: int) -> int:
    """The pid of the torchrun worker with RANK=rank among the launcher's children."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0") if ppid == launcher_pid else []
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} worker under launcher {launcher_pid}")


def status_ranks(srv, wait_s: float = 5.0) -> list[dict]:
    """The per-rank health of /status once a heartbeat has carried it (heartbeats come every 0.5 s)."""
    deadline = time.monotonic() + wait_s
    while True:
        ranks = srv.json("/status")["engine"]["ranks"]
        if ranks or time.monotonic() > deadline:
            return ranks
        time.sleep(0.1)


def first_frames(srv) -> list[bytes]:
    ws, _ = start_session(srv, size="48*32", seed=3)
    with ws:
        got = receive(ws, 90.0, frames=FRAMES)
    assert len(got.frames) >= FRAMES, srv.log_tail()
    return [jpeg for _, jpeg in got.frames[:FRAMES]]


@pytest.mark.slow
def test_two_rank_group_streams_the_same_frames_as_one_rank(server_factory, tiny_dir):
    """Same seed, no keys: the 2-rank group's first frames match the 1-rank engine's, and /status shows 2 ranks
    with their memory and attention backend."""
    group = group_server(server_factory, tiny_dir)
    status = group.json("/status")["engine"]
    assert status["world_size"] == 2
    ranks = status_ranks(group)
    assert sorted(r["rank"] for r in ranks) == [0, 1] and all(r["alive"] for r in ranks)
    assert all(r["memory_used_mb"] > 0 and r["memory_planned_mb"] > 0 and r["attention"] == "direct" for r in ranks)
    grouped = first_frames(group)
    assert group.json("/status")["engine"]["restarts"] == 0, group.log_tail()
    group.stop()
    single = first_frames(server_factory(MODEL_DIR=str(tiny_dir), **GROUP_ENV))
    worst = max(np.abs(pixels(a) - pixels(b)).max() for a, b in zip(grouped, single))
    assert worst <= 2, f"frames differ by up to {worst} levels"


@pytest.mark.slow
def test_losing_a_rank_fails_the_session_and_the_group_restarts(server_factory, tiny_dir):
    """SIGKILL on rank 1 mid-session: engine_failed reaches the client, /ready dips to 503, a new session streams."""
    srv = group_server(server_factory, tiny_dir)
    ws, _ = start_session(srv, size="48*32", seed=3)
    with ws:
        assert len(receive(ws, 60.0, frames=4).frames) >= 4, srv.log_tail()
        launcher = srv.engine_pid()
        os.kill(worker_pid(launcher, 1), signal.SIGKILL)
        got = receive(ws, 60.0, until_type="error")
        errors = got.of_type("error")
        assert errors and errors[-1]["code"] == "engine_failed", (got.messages, srv.log_tail())
        assert srv.get("/ready")[0] == 503
        srv.wait_ready(timeout=120)
        assert srv.json("/status")["engine"]["pid"] != launcher
    ws2, _ = start_session(srv, size="48*32", seed=4)
    with ws2:
        assert len(receive(ws2, 90.0, frames=4).frames) >= 4, srv.log_tail()

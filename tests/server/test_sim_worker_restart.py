"""The sim engine's render workers behind a real server: a dead worker restarts the engine, none outlives it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.server.serverkit import receive, start_session


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (zombies excluded)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def render_workers(engine_pid: int) -> list[int]:
    """The engine's spawned render workers (its other child is multiprocessing's resource tracker)."""
    def cmdline(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""
    return [p for p in children(engine_pid) if b"spawn_main" in cmdline(p)]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killed_render_worker_restarts_the_engine(server_factory):
    """SIGKILL on a render worker: engine_failed reaches the session, a new engine with new workers streams."""
    srv = server_factory(ENGINE_ARGS="--sim-workers 2", RESTART_BACKOFF_MAX_S="1")
    ws, _ = start_session(srv)
    with ws:
        receive(ws, 10, frames=8)
        old_engine = srv.engine_pid()
        workers = render_workers(old_engine)
        assert len(workers) == 2, workers
        helpers = children(old_engine)
        os.kill(workers[0], signal.SIGKILL)
        got = receive(ws, 15, until_type="error")
        errors = got.of_type("error")
        assert errors and errors[-1]["code"] == "engine_failed", got.messages
        srv.wait_ready(timeout=60)
        status = srv.json("/status")
        assert status["engine"]["pid"] != old_engine and "worker" in status["last_error"]
        assert len(receive(ws, 20, frames=16).frames) == 16
        assert len(render_workers(srv.engine_pid())) == 2
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(p) for p in helpers):
        time.sleep(0.1)
    assert not [p for p in helpers if alive(p)], "a child of the old engine outlived it"

"""Engine death is a message: sessions are told, /ready goes 503, the engine restarts and streaming resumes."""

from __future__ import annotations

import json
import os
import signal
import time

from tests.server.serverkit import receive, start_session


def test_killed_engine_is_reported_and_replaced(server_factory):
    """SIGKILL on the engine: engine_failed reaches the session, /ready dips to 503, then a new engine streams."""
    srv = server_factory(RESTART_BACKOFF_MAX_S="1")
    ws, _ = start_session(srv)
    with ws:
        receive(ws, 10, frames=8)
        old_pid = srv.engine_pid()
        os.kill(old_pid, signal.SIGKILL)
        got = receive(ws, 10, until_type="error")
        errors = got.of_type("error")
        assert errors and errors[-1]["code"] == "engine_failed", got.messages
        saw_503 = srv.get("/ready")[0] == 503
        srv.wait_ready(timeout=30)
        assert saw_503 or srv.json("/status")["engine"]["restarts"] >= 1
        status = srv.json("/status")
        assert status["engine"]["restarts"] == 1 and status["engine"]["pid"] != old_pid
        assert "exited" in status["last_error"]
        # The session was re-opened on the new engine and streams again.
        assert len(receive(ws, 15, frames=16).frames) == 16
    ws2, reply = start_session(srv)
    with ws2:
        assert len(receive(ws2, 10, frames=8).frames) == 8
    _, _, metrics = srv.get("/metrics")
    assert b"world_engine_restarts_total 1.0" in metrics


def test_hung_engine_is_detected_and_restarted(server_factory):
    """A stopped (SIGSTOP) engine misses heartbeats, is replaced, and the server is ready again."""
    srv = server_factory(HEARTBEAT_TIMEOUT_S="2", RESTART_BACKOFF_MAX_S="1")
    old_pid = srv.engine_pid()
    os.kill(old_pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and srv.get("/ready")[0] == 200:
            time.sleep(0.1)
        status, _, body = srv.get("/ready")
        assert status == 503 and "heartbeat" in json.loads(body)["reason"]
        srv.wait_ready(timeout=30)
        assert srv.json("/status")["engine"]["pid"] != old_pid
    finally:
        try:
            os.kill(old_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(old_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"hung engine {old_pid} was not reaped")


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Pids still alive (zombies count as gone) after waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.1)
    return alive


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    """Direct children of pid (torchrun's rank processes)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return kids


def test_engine_exits_when_the_front_is_killed(server_factory):
    """SIGKILL on the front: the engine notices its front is gone and exits by itself."""
    srv = server_factory()
    engine = srv.engine_pid()
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(timeout=10)
    assert _wait_gone([engine], 15) == [], "engine outlived its front"


def test_torchrun_group_exits_when_the_front_is_killed(server_factory):
    """SIGKILL on the front of a 2-rank torchrun engine group: every process of the group exits by itself."""
    srv = server_factory(NUM_GPUS="2", HEARTBEAT_TIMEOUT_S="30")
    launcher = srv.engine_pid()  # torchrun; its children are the two ranks
    group = [launcher, *_children(launcher)]
    assert len(group) == 3, group
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(timeout=10)
    left = _wait_gone(group, 60)
    for pid in left:  # do not leave strays behind when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"engine group processes outlived the front: {left}"

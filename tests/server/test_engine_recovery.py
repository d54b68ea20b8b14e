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

"""Admission control on a real sim server: queue or refuse beyond capacity, and sessions of two sizes never share a step."""

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed

from tests.server.serverkit import open_ws, receive, start_session


def send_init(srv, **fields):
    ws = open_ws(srv.ws_url, max_size=None, open_timeout=10)
    ws.send(json.dumps({"type": "init", "prompt": "green hills", "seed": 7, **fields}))
    return ws


def queued_positions(got) -> list[int]:
    return [m["position"] for m in got.of_type("status") if m.get("state") == "queued"]


def wait_status(srv, check, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    status = srv.json("/status")
    while not check(status) and time.monotonic() < deadline:
        time.sleep(0.2)
        status = srv.json("/status")
    return status


def test_second_client_waits_in_the_queue_and_starts_when_the_first_leaves(server_factory):
    """With room for one session the second init is queued at position 1 and streams once the first disconnects."""
    srv = server_factory(MAX_SESSIONS="1", ADMISSION="queue")
    first, _ = start_session(srv)
    with first:
        assert len(receive(first, 10, frames=4).frames) == 4
        second = send_init(srv)
        got = receive(second, 5, until_type="status")
        assert queued_positions(got) == [1]
        assert receive(second, 1.0).frames == []
        metrics = srv.get("/metrics")[2].decode()
        assert "world_sessions_queued 1.0" in metrics
        assert srv.json("/status")["totals"]["queued"] == 1
    with second:
        got = receive(second, 20, until_type="session")
        assert got.of_type("session"), got.messages
        assert len(receive(second, 10, frames=4).frames) == 4
    status = wait_status(srv, lambda s: s["totals"]["sessions"] == 0)
    assert status["totals"]["queued"] == 0


def test_queued_clients_move_up_and_a_leaver_leaves_the_queue(server_factory):
    """A queued client that disconnects is removed and the one behind it is told it is now first."""
    srv = server_factory(MAX_SESSIONS="1", ADMISSION="queue", MAX_QUEUE="2")
    first, _ = start_session(srv)
    with first:
        second, third = send_init(srv), None
        assert queued_positions(receive(second, 5, until_type="status")) == [1]
        third = send_init(srv)
        assert queued_positions(receive(third, 5, until_type="status")) == [2]
        fourth = send_init(srv)  # beyond MAX_QUEUE: busy
        got = receive(fourth, 5, until_type="error")
        assert [m["code"] for m in got.of_type("error")] == ["busy"]
        fourth.close()
        second.close()
        assert queued_positions(receive(third, 5, until_type="status")) == [1]
        status = wait_status(srv, lambda s: s["totals"]["queued"] == 1)
        assert status["totals"]["queued"] == 1 and status["admission"]["queue"][0]["position"] == 1
        third.close()
        status = wait_status(srv, lambda s: s["totals"]["queued"] == 0)
        assert status["totals"]["queued"] == 0 and status["totals"]["sessions"] == 1


def test_reject_mode_answers_busy_instead_of_queueing(server_factory):
    """With ADMISSION=reject an init beyond MAX_SESSIONS gets busy and a 1013 close, never a queue place."""
    srv = server_factory(MAX_SESSIONS="1", ADMISSION="reject")
    first, _ = start_session(srv)
    with first, send_init(srv) as second:
        got = receive(second, 5, until_type="error")
        assert [m["code"] for m in got.of_type("error")] == ["busy"] and not queued_positions(got)
        with pytest.raises(ConnectionClosed) as info:
            second.recv(timeout=5)
        assert info.value.rcvd.code == 1013


def test_two_sizes_never_share_a_step_and_both_stream(server_factory):
    """Sessions of 832*480 and 480*832 both get frames, report late chunks, and no engine step mixes their signatures."""
    srv = server_factory(MAX_SESSIONS="4", ADMISSION_CAPACITY="off")  # two sessions whatever this CPU measures
    wide, _ = start_session(srv, size="832*480")
    tall, _ = start_session(srv, size="480*832")
    with wide, tall:
        for _ in range(4):
            assert receive(wide, 10, frames=3).frames and receive(tall, 10, frames=3).frames
        status = wait_status(srv, lambda s: sum(b["batches"] for b in s["engine"]["batching"]) >= 6)
    engine = status["engine"]
    assert engine["mixed_batches"] == 0
    by_size = {b["size"]: b for b in engine["batching"]}
    assert set(by_size) == {"832*480", "480*832"}
    assert len({b["signature"] for b in by_size.values()}) == 2
    assert all(b["batches"] >= 2 and b["batch_limit"] >= 1 and b["step_ms"] for b in by_size.values())
    for s in status["sessions"]:
        assert s["late_chunks"] >= 0 and s["stalled_s"] >= 0
    assert "world_late_chunks_total" in srv.get("/metrics")[2].decode()

"""Worlds survive a dropped connection: resume continues the same world from the same pose; grace and tokens are bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
from websockets.exceptions import ConnectionClosed

from tests.server.serverkit import Received, ServerProcess, open_ws, receive
from tests.server.simref import Reference, decode, diff

SEED = 5
PROMPT = "green rolling hills"
GRACE_S = 3.0
STEP = 0.05  # units per frame of W
WALK_S = 1.5


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """A sim server that keeps dropped worlds for 3 s and drops a client that takes no data for 2 s."""
    server = ServerProcess(tmp_path_factory.mktemp("run"), {
        "RESUME_GRACE_S": str(GRACE_S), "SLOW_CLIENT_TIMEOUT_S": "2", "ADMISSION_CAPACITY": "off",
        "MAX_SESSIONS": "6"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ref():
    return Reference(PROMPT, SEED)


def connect(srv, **kwargs):
    return open_ws(srv.ws_url, max_size=None, open_timeout=10, **kwargs)


def start(srv, **kwargs):
    """(ws, session reply, frames received so far) of a fresh world."""
    ws = connect(srv, **kwargs)
    ws.send(json.dumps({"type": "init", "prompt": PROMPT, "seed": SEED}))
    got = receive(ws, 20.0, until_type="session")
    replies = got.of_type("session")
    assert replies, got.messages
    return ws, replies[0]


def walk(ws, seconds: float = WALK_S) -> list[bytes]:
    """Hold W for `seconds` while reading; the frames received."""
    frames = [f for _, f in receive(ws, 1.0).frames]
    ws.send(json.dumps({"type": "control", "key": "w", "action": "down"}))
    frames += [f for _, f in receive(ws, seconds).frames]
    return frames


def drain(ws, texts: list | None = None) -> list[bytes]:
    """Frames the client library still holds after its connection ended (JSON messages go to `texts`)."""
    frames = []
    while True:
        try:
            msg = ws.recv(timeout=3.0)
        except (ConnectionClosed, TimeoutError, EOFError):
            return frames
        if isinstance(msg, bytes):
            frames.append(msg)
        elif texts is not None:
            texts.append(json.loads(msg))


def resume(srv, resume_token: str, frames: int, **extra):
    """(ws, everything received until the reply and 2 s after it) for a resume on a new connection."""
    ws = connect(srv)
    sent_at = time.monotonic()
    ws.send(json.dumps({"type": "resume", "resume_token": resume_token, "frames": frames, **extra}))
    got = Received()
    try:
        # A refusal ends the wait too: the connection has no world after it, so INIT_TIMEOUT_S (10 s) runs
        # from its open, and a test that goes on with an init must not spend that time waiting here.
        receive(ws, 10.0, until_type=("resumed", "error"), into=got)
        if got.of_type("resumed"):
            receive(ws, 2.0, into=got)
    except ConnectionClosed:
        pass  # refused and closed (unauthorized): what came before the close is in `got`
    return ws, got, sent_at


def assert_continues(ref, before: list[bytes], after: list[bytes]) -> tuple[float, float]:
    """The first frame after the resume is at most one frame of walking past the last one before the drop."""
    z_before, err_before = ref.locate_forward(decode(before[-1]))
    z_after, err_after = ref.locate_forward(decode(after[0]))
    assert err_before < 3.0 and err_after < 3.0, (err_before, err_after)
    assert z_before >= 0.3, f"the walk had not started before the drop (z={z_before})"
    assert -0.006 <= z_after - z_before <= STEP + 0.006, (z_before, z_after)
    return z_before, z_after


def test_client_network_drop_resumes_the_same_world_at_the_same_pose(srv, ref):
    """A socket lost mid-walk: the world is kept (detached in /status), and a resume continues it from the same pose."""
    ws, reply = start(srv)
    before = walk(ws)
    ws.close_socket()  # no close frame: the network went away
    before += drain(ws)
    status = srv.json("/status")
    [entry] = [s for s in status["sessions"] if s["id"] == reply["session_id"]]
    assert entry["state"] == "detached" and 0 < entry["grace_left_s"] <= GRACE_S
    assert status["totals"]["detached"] >= 1
    ws2, got, _ = resume(srv, reply["resume_token"], len(before))
    with ws2:
        [resumed] = got.of_type("resumed")
        assert got.of_type("session") == [], "a resume must not start a new world"
        assert resumed["session_id"] == reply["session_id"] and resumed["frames"] == len(before)
        assert resumed["resume_token"] != reply["resume_token"]
        after = [f for _, f in got.frames]
        assert len(after) >= 16
        z_before, _ = assert_continues(ref, before, after)
        # W was released at the drop: the camera stands where it stopped.
        still = [decode(f) for f in after[-4:]]
        assert max(diff(a, b) for a, b in zip(still, still[1:])) < 1.0
        # The old token was used: it resumes nothing now.
        ws3, got3, _ = resume(srv, reply["resume_token"], 0)
        ws3.close()
        [error] = got3.of_type("error")
        assert error["code"] == "not_resumable" and error["reason"] == "used"


def test_server_side_drop_of_a_stalled_client_resumes_at_the_same_pose(srv, ref):
    """A client that stops reading is dropped by the server; its world is kept and resumes where the client's frames ended."""
    sock = socket.create_connection(("127.0.0.1", srv.ws_port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)  # fixed: no autotuning to megabytes
    ws, reply = start(srv, sock=sock, max_queue=4)
    before = walk(ws)
    deadline = time.monotonic() + 15
    dropped = False
    time.sleep(1.0)  # stop reading: the server's sends block, then the watchdog drops the connection
    while time.monotonic() < deadline and not dropped:
        status = srv.json("/status")
        dropped = any(s["id"] == reply["session_id"] and s["state"] == "detached" for s in status["sessions"])
        time.sleep(0.2)
    assert dropped, "the stalled client was not dropped"
    before += drain(ws)
    ws.close_socket()
    ws2, got, _ = resume(srv, reply["resume_token"], len(before))
    with ws2:
        assert got.of_type("resumed") and not got.of_type("session"), got.messages
        assert_continues(ref, before, [f for _, f in got.frames])
    assert 'reason="slow_client"' in srv.get("/metrics")[2].decode()


def test_resume_takes_the_world_from_a_connection_still_open(srv, ref):
    """Resuming while the old socket still looks open moves the world: the old connection is told and closed."""
    ws, reply = start(srv)
    receive(ws, 1.0)
    ws2, got, _ = resume(srv, reply["resume_token"], 0)
    with ws2:
        assert got.of_type("resumed"), got.messages
        assert len(got.frames) >= 16
        told: list[dict] = []
        drain(ws, told)
        assert "resumed_elsewhere" in [m.get("code") for m in told]
        assert ws.close_code == 1000
        assert [s["id"] for s in srv.json("/status")["sessions"]].count(reply["session_id"]) == 1


def test_after_the_grace_the_world_is_gone_and_init_starts_a_fresh_one(srv, ref):
    """A resume after RESUME_GRACE_S is refused as expired; an init then starts a new world at the start view."""
    ws, reply = start(srv)
    walk(ws, 1.0)
    ws.close_socket()
    time.sleep(GRACE_S + 1.5)
    assert reply["session_id"] not in [s["id"] for s in srv.json("/status")["sessions"]]
    ws2, got, _ = resume(srv, reply["resume_token"], 10)
    with ws2:
        [error] = got.of_type("error")
        assert error["code"] == "not_resumable" and error["reason"] == "expired"
        ws2.send(json.dumps({"type": "init", "prompt": PROMPT, "seed": SEED}))
        fresh = receive(ws2, 20.0, until_type="session")
        [session] = fresh.of_type("session")
        assert session["session_id"] != reply["session_id"]
        frames = receive(ws2, 2.0).frames
        z, err, _ = ref.best_forward(decode(frames[-1][1]), zs=[0.0, 0.05, 0.1])
        assert z == 0.0 and err < 3.0


def test_bad_resume_messages_are_refused_clearly(srv):
    """Unknown tokens, malformed fields and a resume on a connection with a world get clear errors."""
    ws = connect(srv)
    with ws:
        ws.send(json.dumps({"type": "resume", "resume_token": "x" * 40, "frames": 0}))
        ws.send(json.dumps({"type": "resume", "resume_token": 7}))
        ws.send(json.dumps({"type": "resume", "resume_token": "abc", "frames": -1}))
        errors = receive(ws, 3.0).of_type("error")
        assert [(e["code"], e.get("reason")) for e in errors] == [
            ("not_resumable", "unknown"), ("bad_field", None), ("bad_field", None)]
    ws, reply = start(srv)
    with ws:
        ws.send(json.dumps({"type": "resume", "resume_token": reply["resume_token"]}))
        errors = receive(ws, 2.0).of_type("error")
        assert errors and errors[0]["code"] == "bad_field" and "without a world" in errors[0]["message"]


def test_kept_worlds_hold_their_place_need_the_access_token_and_end_with_the_engine(server_factory):
    """A kept world holds its admission place; a resume needs the access token; an engine restart ends kept worlds."""
    auth = "resume-test-token"
    server = server_factory(AUTH_TOKEN=auth, RESUME_GRACE_S="60", MAX_SESSIONS="1", ADMISSION="reject")
    init = json.dumps({"type": "init", "prompt": PROMPT, "seed": SEED, "token": auth})
    ws = connect(server)
    ws.send(init)
    reply = receive(ws, 20.0, until_type="session").of_type("session")[0]
    receive(ws, 1.0)
    ws.close_socket()
    other = connect(server)
    other.send(init)
    refused = Received()
    try:
        receive(other, 10.0, into=refused)
    except ConnectionClosed:
        pass
    assert [e["code"] for e in refused.of_type("error")] == ["busy"], "the kept world did not hold its place"
    ws2, got, _ = resume(server, reply["resume_token"], 0)
    assert [e["code"] for e in got.of_type("error")] == ["unauthorized"]
    ws2.close()
    ws2, got, _ = resume(server, reply["resume_token"], 0, token="wrong")
    assert [e["code"] for e in got.of_type("error")] == ["unauthorized"]
    ws2.close()
    os.kill(server.engine_pid(), signal.SIGKILL)
    time.sleep(1.0)
    server.wait_ready(60)
    ws2, got, _ = resume(server, reply["resume_token"], 0, token=auth)
    with ws2:
        [error] = got.of_type("error")
        assert error["code"] == "not_resumable" and error["reason"] == "engine_restarted"
        ws2.send(init)  # the place the kept world held is free again
        assert receive(ws2, 20.0, until_type="session").of_type("session")

"""Watch links and mouse look over a real WebSocket: viewers share the owner's frames read-only; look turns the camera."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from tests.server.serverkit import Received, ServerProcess, open_ws, receive
from tests.server.simref import Reference, decode, diff, pose_after

SEED = 9
PROMPT = "green rolling hills"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """A sim server with room for a few worlds and at most two viewers per world."""
    server = ServerProcess(tmp_path_factory.mktemp("run"), {
        "MAX_VIEWERS_PER_SESSION": "2", "ADMISSION_CAPACITY": "off", "MAX_SESSIONS": "4"}).start()
    yield server
    server.stop()


def start(srv):
    ws = open_ws(srv.ws_url, max_size=None, open_timeout=10)
    ws.send(json.dumps({"type": "init", "prompt": PROMPT, "seed": SEED}))
    [reply] = receive(ws, 20.0, until_type="session").of_type("session")
    return ws, reply


def watch(srv, watch_id: str, sock=None, **kwargs):
    ws = open_ws(srv.ws_url, max_size=None, open_timeout=10, sock=sock, **kwargs)
    ws.send(json.dumps({"type": "watch", "watch_id": watch_id}))
    return ws


def receive_until_closed(ws, seconds: float) -> Received:
    got = Received()
    try:
        receive(ws, seconds, into=got)
    except ConnectionClosed:
        pass
    return got


def test_viewers_get_the_owners_frames_cannot_steer_and_are_counted_and_capped(srv):
    """A viewer gets the same JPEG frames as the owner, cannot steer, shows in stats and /status; a third is refused."""
    owner, reply = start(srv)
    with owner:
        receive(owner, 1.0)
        viewer = watch(srv, reply["watch_id"])
        with viewer:
            got = receive(viewer, 10.0, until_type="watching")
            [watching] = got.of_type("watching")
            assert watching["width"] == 832 and watching["prompt"] == reply["prompt"]
            seen = receive(viewer, 2.0, into=got).frames
            owner_frames = {f for _, f in receive(owner, 1.0).frames}
            assert len(seen) >= 16 and sum(f in owner_frames for _, f in seen[-8:]) >= 4, "not the owner's frames"
            for msg in ({"type": "control", "key": "w", "action": "down"}, {"type": "look", "yaw": 30},
                        {"type": "prompt", "prompt": "a desert"}, {"type": "reset"},
                        {"type": "init", "prompt": "mine now"}):
                viewer.send(json.dumps(msg))
            errors = receive(viewer, 2.0).of_type("error")
            assert [e["code"] for e in errors] == ["read_only"] * 5
            stats = receive(owner, 2.5, until_type="stats").of_type("stats")
            assert stats and stats[-1]["viewers"] == 1
            [entry] = [s for s in srv.json("/status")["sessions"] if s["id"] == reply["session_id"]]
            assert entry["viewers"] == 1 and srv.json("/status")["totals"]["sessions"] >= 1
            second = watch(srv, reply["watch_id"])
            third = watch(srv, reply["watch_id"])
            assert receive(second, 10.0, until_type="watching").of_type("watching")
            refused = receive_until_closed(third, 10.0)
            assert [e["code"] for e in refused.of_type("error")] == ["busy"]
            assert "MAX_VIEWERS_PER_SESSION" in refused.of_type("error")[0]["message"]
            second.close()
            # The owner starts a new world: the link follows it.
            owner.send(json.dumps({"type": "init", "prompt": "snowy mountains", "seed": SEED}))
            moved = receive(viewer, 20.0, until_type="watching").of_type("watching")
            assert moved and moved[0]["prompt"] == "snowy mountains"
    unknown = watch(srv, "no-such-world")
    assert [e["code"] for e in receive_until_closed(unknown, 5.0).of_type("error")] == ["not_found"]


def test_a_viewer_that_stops_reading_does_not_slow_the_owner(srv):
    """A viewer that never reads loses its own frames; the owner keeps 16 fps."""
    owner, reply = start(srv)
    sock = socket.create_connection(("127.0.0.1", srv.ws_port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled = watch(srv, reply["watch_id"], sock=sock, max_queue=1)
    try:
        with owner:
            got = receive(owner, 9.0, frames=130)
            times = [t for t, _ in got.frames][16:]
            fps = (len(times) - 1) / (times[-1] - times[0])
            assert 14.5 <= fps <= 17.5, fps
            deadline = time.monotonic() + 10
            viewers = None
            while time.monotonic() < deadline:
                viewers = [s["viewers"] for s in srv.json("/status")["sessions"] if s["id"] == reply["session_id"]]
                if viewers == [1]:
                    break
                time.sleep(0.2)
            assert viewers == [1]
            assert receive(owner, 2.5, until_type="stats").of_type("stats")[-1]["dropped"] == 0
    finally:
        stalled.close_socket()


def test_look_turns_the_camera_like_the_look_keys(srv):
    """Look deltas turn the view exactly as holding the look keys for the same angle would."""
    ref = Reference(PROMPT, SEED)
    owner, _ = start(srv)
    with owner:
        receive(owner, 1.0)
        owner.send(json.dumps({"type": "look", "yaw": 6.0, "pitch": -2.0}))
        owner.send(json.dumps({"type": "look", "yaw": 4.0, "pitch": -4.0}))
        frames = [f for _, f in receive(owner, 3.0).frames]
    frame = decode(frames[-1])
    turned = ref.at_pose(pose_after(l=5, k=3))  # 10 degrees right, 6 degrees down
    err, err_start = diff(frame, turned), diff(frame, ref.at_pose(np.eye(4)))
    assert err < 3.0 and err_start > 2.0 * err, (err, err_start)
    still = [decode(f) for f in frames[-4:]]
    assert max(diff(a, b) for a, b in zip(still, still[1:])) < 1.0, "the turn did not stop"

"""Streaming behaviour over a real WebSocket: pacing, motion from keys, prompt, reset, fairness."""

from __future__ import annotations

import json
import socket
import time

import numpy as np

from tests.server.serverkit import open_ws, receive, start_session
from tests.server.simref import Reference, decode, diff

SEED = 11
PROMPT = "green rolling hills"


def test_frames_arrive_at_16_fps(server):
    """After init and the session reply, at least 48 frames arrive at 16 +/- 1.5 fps."""
    ws, reply = start_session(server, prompt=PROMPT, seed=SEED)
    with ws:
        assert reply["width"] == 832 and reply["height"] == 480 and reply["fps"] == 16
        got = receive(ws, 15, frames=72)
    times = [t for t, _ in got.frames]
    assert len(times) >= 72, f"only {len(times)} frames"
    fps = (len(times[16:]) - 1) / (times[-1] - times[16])  # skip the start-up burst window
    assert 14.5 <= fps <= 17.5, fps
    assert all(decode(f).shape == (480, 832, 3) for _, f in got.frames[:3])
    stats = got.of_type("stats")
    assert stats and {"fps", "frames", "dropped", "chunk_ms", "control_latency_ms", "queue"} <= set(stats[-1])


def test_keys_move_prompt_keeps_position_reset_returns(server):
    """Holding W walks forward, releasing stops, a prompt change keeps the position and reset returns to start."""
    ref = Reference(PROMPT, SEED)
    ws, _ = start_session(server, prompt=PROMPT, seed=SEED)
    with ws:
        idle = receive(ws, 1.5, frames=16).frames
        z, err, _ = ref.best_forward(decode(idle[-1][1]), zs=np.arange(0.0, 0.31, 0.05))
        assert z == 0.0 and err < 3.0, (z, err)

        ws.send(json.dumps({"type": "control", "key": "w", "action": "down"}))
        receive(ws, 1.5)
        ws.send(json.dumps({"type": "control", "key": "w", "action": "up"}))
        after = receive(ws, 1.5).frames
        last = [decode(f) for _, f in after[-6:]]
        assert max(diff(a, b) for a, b in zip(last, last[1:])) < 1.0, "camera still moving after release"
        z_walk, err, err0 = ref.best_forward(last[-1])
        # 1.5 s of W at 0.8 units/s is 1.2 units, give or take the chunk boundaries.
        assert 0.8 <= z_walk <= 1.6 and err < 3.0 and err0 > 1.5 * err, (z_walk, err, err0)

        ws.send(json.dumps({"type": "prompt", "prompt": "snowy mountains at night"}))
        frame = first_frame_where(ws, lambda f: diff(f, last[-1]) > 8.0)
        assert diff(frame, last[-1]) > 8.0, "prompt change did not change the look"
        ref.set_prompt("snowy mountains at night")
        z_prompt, err, _ = ref.best_forward(frame, zs=np.arange(z_walk - 0.2, z_walk + 0.21, 0.05))
        assert abs(z_prompt - z_walk) < 0.06 and err < 3.0, (z_prompt, z_walk, err)

        ws.send(json.dumps({"type": "reset"}))
        frame = first_frame_where(ws, lambda f: ref.best_forward(f, zs=np.arange(0.0, 0.31, 0.05))[0] == 0.0)
        z_reset, err, _ = ref.best_forward(frame, zs=np.arange(0.0, 0.31, 0.05))
        assert z_reset == 0.0 and err < 3.0, (z_reset, err)
        stats = receive(ws, 2.0, until_type="stats").of_type("stats")
        assert stats and stats[-1]["control_latency_ms"] is not None and stats[-1]["control_latency_ms"] > 0


def first_frame_where(ws, wanted, seconds: float = 10.0) -> np.ndarray:
    """The newest frame of each half second until one is `wanted` (a change shows within a chunk or two, later on
    a loaded CPU); the last frame read when none is by the deadline."""
    deadline, frame = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        got = receive(ws, 0.5)
        if got.frames:
            frame = decode(got.frames[-1][1])
            if wanted(frame):
                return frame
    assert frame is not None, "no frames arrived"
    return frame


def _stalled_client(srv) -> socket.socket:
    """A raw WebSocket client with a tiny receive buffer that never reads after the handshake."""
    sock = socket.create_connection(("127.0.0.1", srv.ws_port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws = open_ws(srv.ws_url, sock=sock, max_queue=1)
    ws.send(json.dumps({"type": "init", "prompt": "slow reader", "seed": 1}))
    return ws


def test_stalled_client_does_not_slow_another(server_factory):
    """A client that stops reading gets its oldest frames dropped while another keeps 16 fps."""
    srv = server_factory(MAX_SESSIONS="4", ADMISSION_CAPACITY="off")  # two sessions whatever this CPU measures
    slow = _stalled_client(srv)
    try:
        ws, _ = start_session(srv, prompt=PROMPT, seed=SEED)
        with ws:
            got = receive(ws, 8, frames=110)
            times = [t for t, _ in got.frames][16:]
            fps = (len(times) - 1) / (times[-1] - times[0])
            assert 14.5 <= fps <= 17.5, fps
            deadline = time.monotonic() + 20
            drops = 0
            while time.monotonic() < deadline and drops == 0:
                sessions = srv.json("/status")["sessions"]
                drops = max(s["drops"] for s in sessions)
                time.sleep(0.5)
            assert drops > 0, "the stalled client's frames were never dropped"
    finally:
        slow.close_socket()


def test_disconnect_frees_the_session(server):
    """Closing the socket removes the session from /status and from the engine."""
    ws, reply = start_session(server)
    receive(ws, 5, frames=4)
    assert any(s["id"] == reply["session_id"] for s in server.json("/status")["sessions"])
    ws.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = server.json("/status")
        if not status["sessions"] and status["engine"]["queued_steps"] == 0:
            break
        time.sleep(0.1)
    assert status["sessions"] == []

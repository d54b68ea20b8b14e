"""The real server with ENGINE=lingbot-fast on a tiny random checkpoint: frames stream, keys steer, /test-frame."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint
from tests.server.serverkit import http_get, receive, start_session


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "lingbot-tiny", seed=2, sizes=("48*32", "64*48"))


def pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int16)


def test_lingbot_server_streams_frames_steers_with_keys_and_renders_test_frames(server_factory, tiny_dir):
    """A tiny lingbot-fast server streams 48x32 JPEGs, holding W changes them versus idle, and /test-frame works."""
    # Two sessions on purpose: a CPU cannot hold two at 16 fps, so measured capacity would queue the second.
    srv = server_factory(ENGINE="lingbot-fast", MODEL_DIR=str(tiny_dir), ENGINE_STEP_TIMEOUT_S="120",
                         ADMISSION_CAPACITY="off")
    assert srv.json("/status")["engine"]["name"] == "lingbot-fast"
    status, headers, body = http_get(srv.url("/test-frame?prompt=hills&width=64&height=48"), timeout=60.0)
    assert status == 200 and headers["Content-Type"].startswith("image/jpeg")
    assert Image.open(io.BytesIO(body)).size == (64, 48)
    idle_ws, reply = start_session(srv, size="48*32", seed=3)
    walk_ws, _ = start_session(srv, size="48*32", seed=3)
    try:
        assert (reply["width"], reply["height"]) == (48, 32)
        walk_ws.send(json.dumps({"type": "control", "key": "w", "action": "down"}))
        idle = receive(idle_ws, 60.0, frames=21)
        walk = receive(walk_ws, 60.0, frames=21)
        assert len(idle.frames) >= 21 and len(walk.frames) >= 21, srv.log_tail()
        assert Image.open(io.BytesIO(idle.frames[0][1])).size == (48, 32)
        # same seed and start: the first chunk (start pose) matches; later frames differ once W moved the camera
        late_diff = max(np.abs(pixels(a) - pixels(b)).max()
                        for (_, a), (_, b) in zip(idle.frames[9:21], walk.frames[9:21]))
        assert late_diff > 8
    finally:
        idle_ws.close()
        walk_ws.close()

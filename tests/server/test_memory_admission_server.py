"""The real server with a memory-limited lingbot-fast engine: a session that does not fit gets `busy`, /status
shows the rank's memory and attention backend, a test frame waits for room."""

import json
import time

import pytest

from inference.lingbot.engine import LingbotFastEngine
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint
from tests.server.serverkit import http_get, open_ws, receive, start_session

GIB = 2**30


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "lingbot-tiny", seed=4, sizes=("48*32",))


def test_second_session_past_the_memory_limit_gets_busy_and_status_shows_memory(server_factory, tiny_dir):
    """With room for one 48*32 session, a second init gets a `busy` error naming the memory, /status lists rank 0's
    used/planned/free MiB and attention backend, and /test-frame is refused until the first session leaves."""
    probe = LingbotFastEngine.from_model_dir(tiny_dir)
    one, two = probe.memory.planned({(48, 32): 1}), probe.memory.planned({(48, 32): 2})
    limit = (one + two) / 2 / GIB
    srv = server_factory(ENGINE="lingbot-fast", MODEL_DIR=str(tiny_dir), ENGINE_STEP_TIMEOUT_S="120",
                         ADMISSION_CAPACITY="off", ENGINE_ARGS=f"--memory-limit-gb {limit:.12f}")
    first, _ = start_session(srv, size="48*32", seed=3)
    try:
        assert len(receive(first, 60.0, frames=9).frames) >= 9, srv.log_tail()
        second = open_ws(srv.ws_url, max_size=None, open_timeout=10)
        try:
            second.send(json.dumps({"type": "init", "prompt": "hills", "seed": 1, "size": "48*32"}))
            errors = receive(second, 30.0, until_type="error").of_type("error")
        finally:
            second.close()
        assert errors and errors[0]["code"] == "busy", errors
        assert "does not fit" in errors[0]["message"] and "--memory-limit-gb" in errors[0]["message"]
        rank0 = srv.json("/status")["engine"]["ranks"][0]
        assert rank0["attention"] == "direct" and rank0["memory_free_mb"] > 0
        assert rank0["memory_used_mb"] > 0 and rank0["memory_planned_mb"] > 0
        status, _, body = http_get(srv.url("/test-frame?width=48&height=32"), timeout=60.0)
        assert status != 200 and b"does not fit" in body
    finally:
        first.close()
    for _ in range(100):  # the front closes the session in the engine shortly after the socket closes
        status, headers, body = http_get(srv.url("/test-frame?width=48&height=32"), timeout=60.0)
        if status == 200:
            break
        time.sleep(0.1)
    assert status == 200 and headers["Content-Type"].startswith("image/jpeg"), body[:300]

"""Hostile and malformed WebSocket input: each gets the right error and the stream goes on."""

from __future__ import annotations

import base64
import json
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.server.serverkit import Received, receive, start_session

TINY_PNG_HEADER_ONLY = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()

# (message text, expected error code)
CORPUS = [
    ("not json at all", "bad_json"),
    ("[1, 2, 3]", "bad_json"),
    ('"just a string"', "bad_json"),
    ("[" * 50000, "bad_json"),
    ('{"type": "ping", "t": NaN}', "bad_json"),
    ("{}", "bad_field"),
    ('{"type": 5}', "bad_field"),
    ('{"type": "teleport"}', "unknown_type"),
    ('{"type": "control", "key": "q", "action": "down"}', "bad_field"),
    ('{"type": "control", "key": "w", "action": "press"}', "bad_field"),
    ('{"type": "control", "key": 7, "action": "down"}', "bad_field"),
    ('{"type": "control"}', "bad_field"),
    ('{"type": "prompt", "prompt": ""}', "bad_field"),
    ('{"type": "prompt", "prompt": 42}', "bad_field"),
    ('{"type": "prompt", "prompt": "' + "x" * 5000 + '"}', "bad_field"),
    ('{"type": "prompt", "prompt": "\\ud800"}', "bad_field"),
    ('{"type": "ping", "t": {"a": 1}}', "bad_field"),
    ('{"type": "ping", "t": 1e400}', "bad_field"),  # parses as infinity: never echoed as non-JSON
    ('{"type": "ping", "t": -1e400}', "bad_field"),
    ('{"type": "ping", "t": 1' + "0" * 400 + '}', "bad_field"),
    ('{"type": "look", "yaw": "left"}', "bad_field"),
    ('{"type": "look", "yaw": 1e400}', "bad_field"),
    ('{"type": "look", "pitch": 720}', "bad_field"),
    ('{"type": "look", "yaw": true}', "bad_field"),
    ('{"type": "watch", "watch_id": ""}', "bad_field"),
    ('{"type": "watch", "watch_id": "' + "w" * 200 + '"}', "bad_field"),
    ('{"type": "resume", "resume_token": "abc", "frames": 1.5}', "bad_field"),
]

INIT_CORPUS = [
    ({"type": "init"}, "bad_field"),
    ({"type": "init", "prompt": ""}, "bad_field"),
    ({"type": "init", "prompt": "x", "seed": "seven"}, "bad_field"),
    ({"type": "init", "prompt": "x", "seed": -1}, "bad_field"),
    ({"type": "init", "prompt": "x", "size": "100*100"}, "bad_field"),
    ({"type": "init", "prompt": "x", "size": 832}, "bad_field"),
    ({"type": "init", "prompt": "x", "upsample": "yes"}, "bad_field"),
    ({"type": "init", "prompt": "x", "image": "!!!not base64!!!"}, "bad_field"),
    ({"type": "init", "prompt": "x", "image": base64.b64encode(b"hello world").decode()}, "bad_field"),
    ({"type": "init", "prompt": "x", "image": "data:image/png,rawdata"}, "bad_field"),
]


def _errors(got):
    return [m["code"] for m in got.of_type("error")]


def test_messages_before_init_are_not_initialized(server):
    """control, prompt, reset and look before init get not_initialized; ping still answers."""
    with connect(server.ws_url) as ws:
        for msg in ({"type": "control", "key": "w", "action": "down"}, {"type": "prompt", "prompt": "x"},
                    {"type": "reset"}, {"type": "look", "yaw": 3}):
            ws.send(json.dumps(msg))
            assert _errors(receive(ws, 5, until_type="error")) == ["not_initialized"]
        ws.send(json.dumps({"type": "ping", "t": 12.5}))
        assert receive(ws, 5, until_type="pong").of_type("pong")[0]["t"] == 12.5
        ws.send('{"type": "ping", "t": 1e300}')  # large but finite: echoed as a JSON number
        raw = ws.recv(timeout=5)
        assert json.loads(raw).get("t") == 1e300 and "Infinity" not in raw, raw


def test_bad_messages_get_errors_and_the_stream_continues(server):
    """Every message of a varied bad corpus yields its error code and frames keep flowing."""
    ws, _ = start_session(server)
    with ws:
        receive(ws, 10, frames=8)
        for text, code in CORPUS:
            ws.send(text)
            got = receive(ws, 5, until_type="error")
            assert _errors(got)[-1:] == [code], (text[:40], got.messages[-3:])
        ws.send(b"\x00\x01binary")
        assert _errors(receive(ws, 5, until_type="error"))[-1:] == ["bad_json"]
        got = receive(ws, 5, frames=16)
        assert len(got.frames) >= 16, "stream stopped after bad messages"
        ws.send(json.dumps({"type": "control", "key": "W", "action": "down"}))
        ws.send(json.dumps({"type": "control", "key": "ArrowLeft", "action": "up"}))
        got = receive(ws, 1.0)
        assert not got.of_type("error"), got.of_type("error")


@pytest.mark.parametrize("msg,code", INIT_CORPUS)
def test_bad_init_fields(server, msg, code):
    """A bad init field gets its error; a following good init still starts a session."""
    with connect(server.ws_url) as ws:
        ws.send(json.dumps(msg))
        assert _errors(receive(ws, 5, until_type="error")) == [code]
        ws.send(json.dumps({"type": "init", "prompt": "meadow", "seed": 1}))
        got = receive(ws, 20, until_type="session")
        assert got.of_type("session"), got.messages


def test_corrupt_image_is_reported_by_the_engine(server):
    """An image with a valid header but corrupt body is refused with bad_field, and the server lives on."""
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "init", "prompt": "x", "image": TINY_PNG_HEADER_ONLY}))
        got = receive(ws, 10, until_type="error")
        assert _errors(got) == ["bad_field"] and "image" in got.of_type("error")[0]["message"]
        ws.send(json.dumps({"type": "init", "prompt": "meadow"}))
        assert receive(ws, 20, until_type="session").of_type("session")
    assert server.get("/ready")[0] == 200


def test_oversized_message_closes_1009(server_factory):
    """A message over MAX_MESSAGE_BYTES closes the connection with 1009."""
    srv = server_factory(MAX_MESSAGE_BYTES="65536")
    with connect(srv.ws_url) as ws:
        ws.send(json.dumps({"type": "init", "prompt": "x" * 100_000}))
        with pytest.raises(ConnectionClosed) as info:
            receive(ws, 5)
            ws.recv(timeout=5)
        assert info.value.rcvd.code == 1009
    assert srv.get("/ready")[0] == 200


def test_control_flood_is_rate_limited_then_closed_1008(server_factory):
    """A control flood gets rate_limited errors and, when sustained, a 1008 close."""
    srv = server_factory(CONTROL_RATE="20", CONTROL_BURST="20")
    ws, _ = start_session(srv)
    got = Received()
    with pytest.raises(ConnectionClosed) as info:
        with ws:
            try:
                for i in range(2000):
                    ws.send(json.dumps({"type": "control", "key": "w", "action": "down" if i % 2 else "up"}))
            except ConnectionClosed:
                pass  # the server closed mid-flood; what it said before is still buffered
            while True:
                receive(ws, 5, into=got)
    assert "rate_limited" in _errors(got)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    deadline = time.monotonic() + 5
    while srv.json("/status")["totals"]["sessions"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert srv.json("/status")["totals"]["sessions"] == 0


def test_origin_allow_list(server_factory):
    """With ALLOWED_ORIGINS set, a foreign browser origin is refused at the handshake and a listed one accepted."""
    srv = server_factory(ALLOWED_ORIGINS="http://good.example")
    with pytest.raises(InvalidStatus) as info:
        connect(srv.ws_url, origin="http://evil.example", open_timeout=5)
    assert info.value.response.status_code == 403
    with connect(srv.ws_url, origin="http://good.example") as ws:
        ws.send(json.dumps({"type": "ping", "t": 1}))
        assert receive(ws, 5, until_type="pong").of_type("pong")


def test_auth_token_on_init(server_factory):
    """With AUTH_TOKEN set, an init without the token is unauthorized (1008) and one with it streams."""
    srv = server_factory(AUTH_TOKEN="tok3n")
    with connect(srv.ws_url) as ws:
        ws.send(json.dumps({"type": "init", "prompt": "x", "token": "wrong"}))
        got = receive(ws, 5, until_type="error")
        assert _errors(got) == ["unauthorized"]
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd.code == 1008
    ws, reply = start_session(srv, token="tok3n")
    with ws:
        assert reply["engine"] == "sim"
        assert len(receive(ws, 10, frames=4).frames) == 4


def test_session_cap_answers_busy(server_factory):
    """Past MAX_SESSIONS with ADMISSION=reject the next init gets busy and a 1013 close; the first keeps streaming."""
    srv = server_factory(MAX_SESSIONS="1", ADMISSION="reject")
    ws1, _ = start_session(srv)
    with ws1, connect(srv.ws_url) as ws2:
        ws2.send(json.dumps({"type": "init", "prompt": "x"}))
        assert _errors(receive(ws2, 5, until_type="error")) == ["busy"]
        with pytest.raises(ConnectionClosed) as info:
            ws2.recv(timeout=5)
        assert info.value.rcvd.code == 1013
        assert len(receive(ws1, 10, frames=8).frames) == 8

"""HTTP routes of a real server on loopback: status codes and body shapes."""

from __future__ import annotations

import io
import json

from PIL import Image


def test_health_is_ok(server):
    """/health answers 200 with status ok while the process lives."""
    status, _, body = server.get("/health")
    assert status == 200
    data = json.loads(body)
    assert data["status"] == "ok" and data["uptime_s"] >= 0


def test_ready_when_engine_loaded(server):
    """/ready answers 200 with ready true once the sim engine is up."""
    data = server.json("/ready")
    assert data["ready"] is True and data["engine"] == "sim"


def test_status_shape(server):
    """/status reports version, engine, gpus, sessions, totals, upsampler and last error."""
    data = server.json("/status")
    for key in ("version", "uptime_s", "engine", "gpus", "sessions", "totals", "upsampler", "last_error"):
        assert key in data, key
    assert data["engine"]["name"] == "sim" and data["engine"]["state"] == "ready"
    assert data["engine"]["world_size"] == 1
    assert data["gpus"] == []
    assert data["upsampler"]["state"] == "disabled"


def test_metrics_text_format(server):
    """/metrics is Prometheus text with the session, frame, latency and restart series."""
    status, headers, body = server.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    for name in ("world_sessions", "world_frames_sent_total", "world_frames_dropped_total",
                 "world_chunk_seconds_bucket", "world_control_latency_seconds_bucket", "world_engine_restarts_total"):
        assert name in text, name


def test_test_frame_is_a_jpeg_of_the_requested_size(server):
    """/test-frame returns a decodable JPEG with the requested width and height."""
    status, headers, body = server.get("/test-frame?prompt=snowy%20peaks&seed=3&width=320&height=200")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    img = Image.open(io.BytesIO(body))
    assert img.format == "JPEG" and img.size == (320, 200)


def test_test_frame_default_size(server):
    """/test-frame without parameters renders the default scene at 832x480."""
    status, _, body = server.get("/test-frame")
    assert status == 200
    assert Image.open(io.BytesIO(body)).size == (832, 480)


def test_test_frame_bad_query_is_400(server):
    """Bad /test-frame parameters get 400 with a JSON reason naming the parameter."""
    for query in ("width=abc", "height=0", "width=100000", "seed=-1", "seed=1.5"):
        status, _, body = server.get(f"/test-frame?{query}")
        assert status == 400, query
        data = json.loads(body)
        assert data["error"] == "bad_field" and query.split("=")[0] in data["message"]


def test_index_and_config(server):
    """/ serves the page and /config tells it the WebSocket port and sizes."""
    status, headers, body = server.get("/")
    assert status == 200 and "text/html" in headers["Content-Type"] and b"<" in body
    cfg = server.json("/config")
    assert cfg["ws_port"] == server.ws_port and "832*480" in cfg["sizes"] and cfg["auth_required"] is False


def test_unknown_route_is_404(server):
    """Unknown paths get 404."""
    assert server.get("/nope")[0] == 404


def test_upsample_route_without_upsampler(server):
    """POST /upsample answers 503 with a clear message when upsampling is disabled."""
    import urllib.request
    import urllib.error

    req = urllib.request.Request(server.url("/upsample"), data=b'{"prompt":"a castle"}', method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("expected 503")
    except urllib.error.HTTPError as e:
        assert e.code == 503 and b"UPSAMPLER" in e.read()


def test_auth_token_guards_status_but_not_probes(server_factory):
    """With AUTH_TOKEN set, /status, /metrics and /test-frame need the bearer token; /health and /ready do not."""
    srv = server_factory(AUTH_TOKEN="s3cret")
    assert srv.get("/health")[0] == 200 and srv.get("/ready")[0] == 200
    for path in ("/status", "/metrics", "/test-frame?width=64&height=64"):
        assert srv.get(path)[0] == 401, path
        assert srv.get(path, {"Authorization": "Bearer wrong"})[0] == 401, path
        assert srv.get(path, {"Authorization": "Bearer s3cret"})[0] == 200, path
    assert srv.json("/config")["auth_required"] is True

"""Endless sessions: the real engine process streams far past the RoPE table in flat memory; a server session too."""

import json
import statistics

import pytest

from inference.tools.engine_probe import EngineProbe, EngineRefused
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint
from tests.server.serverkit import receive, start_session

# The median RSS of the last 100 chunks may exceed that of chunks 50-150 by this much: allocator noise on a
# shared CPU moves it by ~20 MiB; a leak of one chunk's frames (55 kB per chunk here) adds ~27 MiB over 500.
RSS_SLACK_MB = 24.0


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "lingbot-tiny", seed=2, sizes=("48*32",))


def assert_flat_memory(records) -> None:
    early = statistics.median(r.rss_mb for r in records[50:150])
    late = statistics.median(r.rss_mb for r in records[-100:])
    assert late - early <= RSS_SLACK_MB, f"engine RSS grew from {early:.1f} to {late:.1f} MiB"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_lingbot_session_streams_1500_latent_frames_past_the_table_in_flat_memory(tiny_dir, tmp_path):
    """500 chunks (1500 latent frames, past the reference's 1024-position table) all arrive with 12 frames each.

    Per-chunk time is not asserted (a shared CPU moves it tenfold);
    bench/endless.py measures it.
    """
    args = ["--engine", "lingbot-fast", "--model-dir", str(tiny_dir)]
    with EngineProbe(args, log_path=tmp_path / "engine.log") as probe:
        assert probe.ready.max_latent_frames is None  # window mode: no end
        probe.open("long", size="48*32")
        records = probe.stream("long", 500)
    assert [r.frames for r in records] == [9] + [12] * 499
    assert all(r.frames_left is None for r in records)
    assert_flat_memory(records)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sim_session_streams_hours_into_a_walk_in_flat_memory(tmp_path):
    """The sim engine has no length limit: 250 chunks starting four hours into a walk all arrive, memory flat."""
    four_hours = 4 * 3600 * 16  # video frames
    with EngineProbe(["--engine", "sim"], log_path=tmp_path / "engine.log") as probe:
        assert probe.ready.max_latent_frames is None
        probe.open("long", size="832*480")
        records = probe.stream("long", 250, first_frame=four_hours)
    assert [r.frames for r in records] == [4] * 250
    assert_flat_memory(records)


def test_a_global_mode_engine_counts_down_then_refuses_with_session_limit(tiny_dir, tmp_path):
    """Through the engine process, global attention reports frames left in ChunkReady and ends with session_limit."""
    args = ["--engine", "lingbot-fast", "--model-dir", str(tiny_dir), "--kv-window", "-1", "--rope-frames", "12"]
    with EngineProbe(args, log_path=tmp_path / "engine.log") as probe:
        assert probe.ready.max_latent_frames == 12
        probe.open("g", size="48*32")
        records = probe.stream("g", 4)
        assert [r.frames_left for r in records] == [36, 24, 12, 0]
        with pytest.raises(EngineRefused) as refused:
            probe.step("g", 4, first_frame=45)
        assert refused.value.error.code == "session_limit" and refused.value.error.session_id == "g"
        assert not refused.value.error.fatal


def test_a_server_session_streams_past_a_short_table_without_the_client_doing_anything(server_factory, tiny_dir):
    """With a 12-position table a client just watching gets 8 chunks (24 latent frames) and no error."""
    srv = server_factory(ENGINE="lingbot-fast", MODEL_DIR=str(tiny_dir), ENGINE_STEP_TIMEOUT_S="120",
                         ENGINE_ARGS="--rope-frames 12 --kv-window 9 --kv-sink 3")
    ws, reply = start_session(srv, size="48*32", seed=3)
    try:
        frames = 9 + 7 * 12  # the 5th chunk is past the table, the 7th re-anchors again
        got = receive(ws, 90.0, frames=frames)
        assert len(got.frames) >= frames, srv.log_tail()
        assert not got.of_type("error"), got.of_type("error")
        ws.send(json.dumps({"type": "ping", "t": 1.0}))
        assert receive(ws, 10.0, until_type="pong").of_type("pong")  # the session is still alive and answering
    finally:
        ws.close()


def test_a_global_mode_session_warns_then_ends_with_session_limit_and_resets(server_factory, tiny_dir):
    """Global attention, 12-frame table: stats count seconds left down, the client is warned, then told
    session_limit once the last frame has played (its last state is 'ended'); a reset streams a new start."""
    srv = server_factory(ENGINE="lingbot-fast", MODEL_DIR=str(tiny_dir), ENGINE_STEP_TIMEOUT_S="120",
                         ENGINE_ARGS="--rope-frames 12 --kv-window -1")
    ws, reply = start_session(srv, size="48*32", seed=4)
    try:
        total = 9 + 3 * 12  # 4 chunks of 3 latent frames fill the table
        got = receive(ws, 90.0, until_type="error")
        errors = got.of_type("error")
        assert [e["code"] for e in errors] == ["session_limit"], (errors, srv.log_tail())
        receive(ws, 1.0, into=got)  # text may overtake the last queued frame on the client's channel
        assert len(got.frames) == total
        states = [m["state"] for m in got.of_type("status")]
        assert "ending" in states and states[-1] == "ended", states  # the end is told as such, not as a stall
        left = [m["seconds_left"] for m in got.of_type("stats") if m.get("seconds_left") is not None]
        assert left and all(a >= b for a, b in zip(left, left[1:])) and left[0] <= total / 16 + 0.01, left
        ws.send(json.dumps({"type": "reset"}))
        again = receive(ws, 60.0, frames=9)
        assert len(again.frames) >= 9 and not again.of_type("error"), srv.log_tail()
    finally:
        ws.close()

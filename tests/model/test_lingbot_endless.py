"""The lingbot-fast engine past the end of a short RoPE table: window sessions go on, global sessions end honestly."""

import numpy as np
import pytest

from inference.engine.base import ChunkWork, EngineUserError, SessionSpec
from inference.lingbot.engine import LingbotFastEngine
from inference.tools.engine_probe import walk as engine_walk
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint

SIZE = (48, 32)
TABLE = 12  # latent frame positions: the 5th chunk (frames 12-14) is past the table


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "lingbot-tiny", seed=3)


def engine(model_dir, *, window: int, sink: int = 0, rope_frames: int = TABLE) -> LingbotFastEngine:
    return LingbotFastEngine.from_model_dir(model_dir, window=window, sink=sink, rope_frames=rope_frames)


def open_session(eng: LingbotFastEngine, session_id: str, seed: int = 1) -> None:
    eng.open_session(SessionSpec(session_id=session_id, prompt="green hills", seed=seed, width=SIZE[0],
                                 height=SIZE[1]))


def walk(eng: LingbotFastEngine, session_id: str, chunk_index: int) -> ChunkWork:
    """The next chunk of a camera walking forward 0.05 per frame (poses continue across chunks)."""
    session = eng.sessions[session_id]
    done = 0 if session.chunks == 0 else 9 + 12 * (session.chunks - 1)
    poses, keys = engine_walk(session.expected_frames(), done)
    return ChunkWork(session_id=session_id, chunk_index=chunk_index, poses=poses, keys=keys)


def stream(eng: LingbotFastEngine, session_id: str, chunks: int) -> list:
    return [eng.generate([walk(eng, session_id, c)])[0] for c in range(chunks)]


def test_a_window_session_streams_past_the_table_like_an_unlimited_one_without_sink(model_dir):
    """With no sink, 10 chunks through a 12-frame table give the frames of a 4096-frame table (to rounding)."""
    short, unlimited = engine(model_dir, window=6), engine(model_dir, window=6, rope_frames=4096)
    assert short.info().max_latent_frames is None and short.info().extra["rope_frames"] == TABLE
    open_session(short, "s")
    open_session(unlimited, "s")
    got, want = stream(short, "s", 10), stream(unlimited, "s", 10)
    assert all(out.frames_left is None for out in got)
    assert short.sessions["s"].latent_frames == 30 and short.pool_of("s").cache.self_kv.frame_shift[0] > 0
    for chunk, (a, b) in enumerate(zip(got, want)):
        diff = np.abs(a.frames.astype(int) - b.frames.astype(int))
        if chunk < 4:  # inside the table: exactly the reference positions
            assert diff.max() == 0, chunk
        else:  # re-anchored: float32 rounding can flip a pixel's last uint8 level at most
            assert diff.max() <= 1 and diff.mean() < 0.01, chunk


def test_batched_sessions_re_anchoring_at_different_chunks_match_running_alone(model_dir):
    """A re-anchored session keeps its positions when a second one opens, and batched chunks equal solo ones."""
    solo = engine(model_dir, window=9, sink=3)
    open_session(solo, "a", seed=1)
    alone_a = stream(solo, "a", 10)
    solo.close_session("a")
    open_session(solo, "b", seed=2)
    alone_b = stream(solo, "b", 5)

    shared = engine(model_dir, window=9, sink=3)
    open_session(shared, "a", seed=1)
    together_a = stream(shared, "a", 5)  # re-anchors at its 5th chunk
    open_session(shared, "b", seed=2)  # the pool grows under a re-anchored session
    together_b = []
    for c in range(5):
        out_a, out_b = shared.generate([walk(shared, "a", 5 + c), walk(shared, "b", c)])
        together_a.append(out_a)
        together_b.append(out_b)
    for alone, together in ((alone_a, together_a), (alone_b, together_b)):
        for a, b in zip(alone, together):
            diff = np.abs(a.frames.astype(int) - b.frames.astype(int))
            assert diff.max() <= 1 and diff.mean() < 0.01


def test_global_mode_counts_down_and_refuses_the_chunk_past_the_table(model_dir):
    """Global attention reports the video frames left after each chunk and ends with session_limit, then resets."""
    eng = engine(model_dir, window=-1)
    info = eng.info()
    assert info.max_latent_frames == TABLE and "global attention" in info.model
    open_session(eng, "g")
    outs = stream(eng, "g", 4)
    assert [out.frames_left for out in outs] == [36, 24, 12, 0]
    kv = eng.pool_of("g").cache.self_kv
    ends = (kv.global_end[0], kv.local_end[0])
    with pytest.raises(EngineUserError) as err:
        eng.generate([walk(eng, "g", 4)])
    assert err.value.code == "session_limit" and err.value.session_id == "g"
    assert "reset" in str(err.value) and "--kv-window" in str(err.value)
    assert (kv.global_end[0], kv.local_end[0]) == ends and eng.sessions["g"].latent_frames == TABLE
    eng.reset("g")
    again = eng.generate([walk(eng, "g", 5)])[0]
    np.testing.assert_array_equal(again.frames, outs[0].frames)
    assert again.frames_left == 36


def test_a_window_longer_than_the_table_is_refused_when_the_engine_starts(model_dir):
    """An engine whose KV window has more frames than the RoPE table fails with both numbers named."""
    with pytest.raises(ValueError, match="window 12 latent frames is longer than the RoPE table \\(9 frames\\)"):
        engine(model_dir, window=12, sink=3, rope_frames=9)

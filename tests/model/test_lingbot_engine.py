"""The lingbot-fast engine on a tiny random checkpoint: chunk shapes, determinism, prompts, reset, window, batching."""

import shutil

import numpy as np
import pytest
import torch

from inference.engine.base import ChunkWork, EngineUserError, SessionSpec
from inference.lingbot.engine import LingbotFastEngine
from inference.lingbot.layout import ModelFolderError
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint
from tests.tolerance import FRAME_LEVELS

SIZE = (48, 32)  # the tiny checkpoint's smallest valid size (latent 6x4)
WINDOW, SINK = 6, 3  # the window fills after two chunks


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "lingbot-tiny", seed=3)


@pytest.fixture(scope="module")
def engine(model_dir):
    return LingbotFastEngine.from_model_dir(model_dir, window=WINDOW, sink=SINK)


def open_session(engine, session_id, *, seed=1, prompt="green hills", image=None):
    engine.open_session(SessionSpec(session_id=session_id, prompt=prompt, seed=seed, width=SIZE[0], height=SIZE[1],
                                    image=image))


def walk_poses(frames, start=0, speed=0.0):
    """Camera moving `speed` per frame along +z (forward), from frame `start`; frame 0 is the identity."""
    poses = np.broadcast_to(np.eye(4), (frames, 4, 4)).copy()
    poses[:, 2, 3] = speed * (start + np.arange(frames))
    return poses


def work(engine, session_id, chunk_index, speed=0.0, start=0):
    frames = engine.sessions[session_id].expected_frames()
    keys = np.zeros((frames, 8), np.float32)
    if speed:
        keys[:, 0] = 1.0
    return ChunkWork(session_id=session_id, chunk_index=chunk_index, poses=walk_poses(frames, start, speed), keys=keys)


def run_chunks(engine, session_id, count, speed=0.0):
    frames, done = [], 0
    for c in range(count):
        w = work(engine, session_id, c, speed, start=done)
        done += len(w.poses)
        frames.append(engine.generate([w])[0].frames)
    return frames


def test_first_chunk_has_nine_frames_and_later_chunks_twelve(engine):
    """A session's first chunk yields 9 uint8 frames at the session size, the next ones 12."""
    open_session(engine, "shape")
    first, second = run_chunks(engine, "shape", 2)
    assert first.shape == (9, SIZE[1], SIZE[0], 3) and first.dtype == np.uint8
    assert second.shape == (12, SIZE[1], SIZE[0], 3)
    info = engine.info()
    assert (info.first_chunk_frames, info.chunk_frames, info.max_latent_frames) == (9, 12, None)  # no end
    engine.close_session("shape")


def test_same_seed_and_poses_give_identical_frames_and_other_poses_differ(engine):
    """Two sessions with one seed and one trajectory produce identical frames; a moving camera changes them."""
    for sid in ("det_a", "det_b", "det_move"):
        open_session(engine, sid, seed=11)
    a = run_chunks(engine, "det_a", 2)
    b = run_chunks(engine, "det_b", 2)
    moved = run_chunks(engine, "det_move", 2, speed=0.05)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert np.abs(a[1].astype(int) - moved[1].astype(int)).max() > 0
    for sid in ("det_a", "det_b", "det_move"):
        engine.close_session(sid)


def test_set_prompt_changes_frames_but_keeps_the_cache_position(engine):
    """After set_prompt the next chunk differs from an unchanged twin while the KV position stays the same."""
    open_session(engine, "p_same", seed=5)
    open_session(engine, "p_new", seed=5)
    run_chunks(engine, "p_same", 1)
    run_chunks(engine, "p_new", 1)
    engine.set_prompt("p_new", "a futuristic city with neon lights")
    kv = engine.pool_of("p_new").cache.self_kv
    slots = [engine.sessions[s].slot for s in ("p_same", "p_new")]
    assert kv.global_end[slots[0]] == kv.global_end[slots[1]] > 0
    same = engine.generate([work(engine, "p_same", 1)])[0].frames
    new = engine.generate([work(engine, "p_new", 1)])[0].frames
    assert engine.sessions["p_new"].latent_frames == engine.sessions["p_same"].latent_frames == 6
    assert kv.global_end[slots[0]] == kv.global_end[slots[1]]
    assert np.abs(same.astype(int) - new.astype(int)).max() > 0
    engine.close_session("p_same")
    engine.close_session("p_new")


def test_reset_reproduces_the_first_chunk_exactly(engine):
    """reset returns a session to its start: its next first chunk equals the original first chunk."""
    image = (np.arange(40 * 70 * 3) % 251).astype(np.uint8).reshape(40, 70, 3)
    open_session(engine, "reset", seed=9, image=image)
    first = run_chunks(engine, "reset", 3, speed=0.05)[0]
    engine.reset("reset")
    again = engine.generate([work(engine, "reset", 0, speed=0.05)])[0].frames
    np.testing.assert_array_equal(first, again)
    engine.close_session("reset")


def test_window_mode_keeps_the_cache_bounded_over_many_chunks(engine):
    """Over four chunks the KV cache never grows past window x tokens-per-frame while positions keep advancing."""
    open_session(engine, "window")
    kv = engine.pool_of("window").cache.self_kv
    slot = engine.sessions["window"].slot
    shape = tuple(kv.k.shape)
    ends = []
    for c in range(4):
        engine.generate([work(engine, "window", c)])
        ends.append(kv.local_end[slot])
        assert kv.local_end[slot] <= kv.kv_tokens == WINDOW * engine.tokens_per_frame(*SIZE)
    assert tuple(kv.k.shape) == shape
    assert ends[-1] == ends[-2] == kv.kv_tokens
    assert engine.sessions["window"].latent_frames == 12
    engine.close_session("window")


def test_batched_generate_equals_one_session_at_a_time(engine):
    """Two sessions with different prompts and chunk indices batched in one call match running them alone."""
    def prepare(prefix):
        open_session(engine, prefix + "a", seed=1, prompt="green hills")
        open_session(engine, prefix + "b", seed=2, prompt="walking along the beach at sunset")
        run_chunks(engine, prefix + "b", 1, speed=0.05)
    prepare("solo_")
    prepare("duo_")
    solo = [engine.generate([work(engine, "solo_a", 0, 0.05)])[0].frames,
            engine.generate([work(engine, "solo_b", 1, 0.05, start=9)])[0].frames]
    duo = engine.generate([work(engine, "duo_a", 0, 0.05), work(engine, "duo_b", 1, 0.05, start=9)])
    for alone, together in zip(solo, duo):
        diff = np.abs(alone.astype(int) - together.frames.astype(int))
        assert diff.max() <= FRAME_LEVELS and diff.mean() < 0.01  # a level only where a value sat on a boundary
    for sid in ("solo_a", "solo_b", "duo_a", "duo_b"):
        engine.close_session(sid)


def test_bad_size_is_refused_with_the_valid_sizes(engine):
    """A size outside the checkpoint's list raises EngineUserError('bad_field') naming the valid sizes."""
    with pytest.raises(EngineUserError) as err:
        engine.open_session(SessionSpec(session_id="bad", prompt="x", seed=0, width=832, height=480))
    assert err.value.code == "bad_field" and "48*32" in str(err.value)


def test_test_frame_uses_the_nearest_valid_size(engine):
    """render_test_frame at an unsupported size returns a frame at the nearest valid size."""
    frame = engine.render_test_frame("green hills", 0, 50, 30)
    assert frame.shape == (32, 48, 3) and frame.dtype == np.uint8
    assert not engine.sessions


def test_missing_file_error_names_the_file_and_the_download_command(model_dir, tmp_path):
    """Loading a folder without the VAE weights fails with the file name and a download command."""
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(ModelFolderError) as err:
        LingbotFastEngine.from_model_dir(broken)
    assert "Wan2.1_VAE.pth" in str(err.value) and "huggingface-cli download" in str(err.value)


def test_opening_an_open_session_again_restarts_it(engine):
    """A second open_session with the same id (the only session of its size) starts over with a 9-frame chunk."""
    open_session(engine, "again")
    run_chunks(engine, "again", 1)
    open_session(engine, "again", seed=4)
    assert engine.generate([work(engine, "again", 0)])[0].frames.shape[0] == 9
    engine.close_session("again")
    assert not engine.pools


def test_bf16_engine_keeps_the_vae_and_the_dit_islands_float32(model_dir):
    """A bfloat16 engine runs its DiT blocks in bf16 but the VAE, time embedding, time projection and head in
    float32, and still streams frames."""
    engine = LingbotFastEngine.from_model_dir(model_dir, dtype="bfloat16", window=WINDOW, sink=SINK)
    dit, vae = engine.models.dit, engine.models.vae
    assert dit.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in vae.parameters())
    islands = [dit.time_embedding, dit.time_projection, dit.head]
    assert all(p.dtype == torch.float32 for module in islands for p in module.parameters())
    open_session(engine, "bf16")
    frames = run_chunks(engine, "bf16", 2, speed=0.05)
    assert [f.shape for f in frames] == [(9, SIZE[1], SIZE[0], 3), (12, SIZE[1], SIZE[0], 3)]
    assert all(int(f.max()) > int(f.min()) for f in frames)  # real pictures, not a constant fill
    engine.close_session("bf16")

"""SimEngine as the server sees it: sessions, sizes, determinism, prompts and start images."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from inference.engine.base import LINGBOT_SIZES, ChunkWork, EngineUserError, SessionSpec
from inference.sim import SimEngine

W, H = 832, 480


def walk(frames: int, start: float = 0.0) -> np.ndarray:
    """(F, 4, 4) poses walking forward 0.05 per frame from `start`."""
    poses = np.tile(np.eye(4), (frames, 1, 1))
    poses[:, 2, 3] = start + 0.05 * np.arange(frames)
    return poses


def work(session_id: str, poses: np.ndarray, index: int = 0) -> ChunkWork:
    return ChunkWork(session_id=session_id, chunk_index=index, poses=poses,
                     keys=np.zeros((len(poses), 8), np.float32))


def spec(session_id: str, prompt: str = "", seed: int = 3, image=None, size=(W, H)) -> SessionSpec:
    return SessionSpec(session_id=session_id, prompt=prompt, seed=seed, width=size[0],
                       height=size[1], image=image)


@pytest.fixture(scope="module")
def engine() -> SimEngine:
    return SimEngine(chunk_frames=4)


def luminance(frames: np.ndarray) -> float:
    return float((frames.astype(np.float32) @ np.array([0.3, 0.59, 0.11], np.float32)).mean())


def test_info_describes_cpu_sim_engine(engine):
    """info() names the sim engine on the CPU with LingBot's sizes and the chunk length."""
    info = engine.info()
    assert (info.name, info.model, info.device) == ("sim", "procedural", "cpu")
    assert info.sizes == list(LINGBOT_SIZES) and info.default_size == "832*480"
    assert info.first_chunk_frames == info.chunk_frames == 4


def test_import_is_torch_free_and_quick():
    """Importing inference.sim loads no torch and takes well under a second of CPU."""
    # CPU time, not wall time: other processes on a busy machine must not fail this.
    code = ("import sys, time; t = time.process_time(); import inference.sim; "
            "print('torch' in sys.modules, time.process_time() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, seconds = out.stdout.split()
    assert loaded == "False" and float(seconds) < 1.0


def test_generate_returns_one_frame_per_pose(engine):
    """A chunk of F poses comes back as (F, H, W, 3) uint8 frames with the render time."""
    assert engine.open_session(spec("frames")) == f"sim:{W}x{H}:4"
    (out,) = engine.generate([work("frames", walk(3))])
    assert out.frames.shape == (3, H, W, 3) and out.frames.dtype == np.uint8
    assert out.model_ms > 0
    engine.close_session("frames")


def test_same_seed_and_poses_give_identical_frames(engine):
    """Two sessions (even in another engine) with one seed and one path render the same pixels."""
    other = SimEngine(chunk_frames=4)
    engine.open_session(spec("det-a"))
    other.open_session(spec("det-b"))
    a, b = engine.generate([work("det-a", walk(2, 1.0))])[0], other.generate([work("det-b", walk(2, 1.0))])[0]
    np.testing.assert_array_equal(a.frames, b.frames)
    engine.close_session("det-a")


def test_different_seeds_give_different_worlds(engine):
    """Another seed renders another landscape from the same pose."""
    engine.open_session(spec("seed-3", seed=3))
    engine.open_session(spec("seed-4", seed=4))
    a, b = engine.generate([work("seed-3", walk(1)), work("seed-4", walk(1))])
    assert np.abs(a.frames.astype(int) - b.frames).mean() > 15
    engine.close_session("seed-3")
    engine.close_session("seed-4")


def test_prompt_words_change_palette(engine):
    """Night is darker than day, snow is whiter and desert warmer than the default meadow."""
    frames = {}
    for prompt in ("a meadow", "night", "snow", "desert"):
        engine.open_session(spec(prompt, prompt=prompt))
        frames[prompt] = engine.generate([work(prompt, walk(1))])[0].frames[0]
        engine.close_session(prompt)
    ground = slice(H // 2, H)
    day = frames["a meadow"]
    assert luminance(frames["night"]) < 0.4 * luminance(day)
    snow, meadow = frames["snow"][ground].astype(float), day[ground].astype(float)
    assert snow.min(axis=2).mean() > meadow.min(axis=2).mean() + 60  # whiter: every channel high
    warmth = lambda f: float((f[ground, :, 0].astype(float) - f[ground, :, 2]).mean())  # noqa: E731
    assert warmth(frames["desert"]) > warmth(day) + 20


def test_set_prompt_changes_look_not_place(engine):
    """After set_prompt the same poses show the same place in another light."""
    engine.open_session(spec("relight", prompt="sunny hills"))
    before = engine.generate([work("relight", walk(1, 2.0))])[0].frames[0]
    engine.set_prompt("relight", "hills at night")
    after = engine.generate([work("relight", walk(1, 2.0))])[0].frames[0]
    engine.set_prompt("relight", "sunny hills")
    again = engine.generate([work("relight", walk(1, 2.0))])[0].frames[0]
    assert luminance(after) < 0.5 * luminance(before)
    np.testing.assert_array_equal(before, again)
    engine.close_session("relight")


def test_start_image_pulls_colours_toward_it(engine):
    """A purple-over-orange start image moves the frame's mean colour toward the image's."""
    image = np.zeros((90, 160, 3), np.uint8)
    image[:45] = (150, 60, 200)
    image[45:] = (220, 120, 30)
    engine.open_session(spec("plain"))
    engine.open_session(spec("tinted", image=image))
    plain, tinted = engine.generate([work("plain", walk(1)), work("tinted", walk(1))])
    target = image.reshape(-1, 3).mean(axis=0)
    dist = lambda f: np.linalg.norm(f.reshape(-1, 3).mean(axis=0) - target)  # noqa: E731
    assert dist(tinted.frames) < 0.7 * dist(plain.frames)
    engine.close_session("plain")
    engine.close_session("tinted")


def test_bad_start_image_is_a_user_error(engine):
    """A start image that is not (H, W, 3) uint8 is refused with bad_field."""
    with pytest.raises(EngineUserError) as err:
        engine.open_session(spec("gray", image=np.zeros((32, 32), np.uint8)))
    assert err.value.code == "bad_field" and "(32, 32)" in str(err.value)


def test_sizes_are_validated(engine):
    """Sessions accept LingBot sizes only; the error names the allowed ones."""
    with pytest.raises(EngineUserError) as err:
        engine.open_session(spec("bad", size=(720, 480)))
    assert err.value.code == "bad_field" and "832*480" in str(err.value)
    assert engine.open_session(spec("portrait", size=(480, 832))) == "sim:480x832:4"
    (out,) = engine.generate([work("portrait", walk(1))])
    assert out.frames.shape == (1, 832, 480, 3)
    engine.close_session("portrait")


def test_test_frame_accepts_16_to_2048(engine):
    """render_test_frame draws any size from 16 to 2048 per side and refuses others."""
    assert engine.render_test_frame("sunset", 1, 16, 16).shape == (16, 16, 3)
    assert engine.render_test_frame("sunset", 1, 101, 37).shape == (37, 101, 3)
    for w, h in ((15, 100), (100, 2049)):
        with pytest.raises(EngineUserError):
            engine.render_test_frame("sunset", 1, w, h)


def test_unknown_sessions(engine):
    """Closing an unknown id is ignored; generating, prompting or resetting it is a KeyError."""
    engine.close_session("nobody")
    with pytest.raises(KeyError, match="nobody"):
        engine.generate([work("nobody", walk(1))])
    with pytest.raises(KeyError):
        engine.set_prompt("nobody", "night")
    with pytest.raises(KeyError):
        engine.reset("nobody")


def test_reset_keeps_rendering_from_poses(engine):
    """After reset the start pose renders the same frame as before."""
    engine.open_session(spec("reset"))
    first = engine.generate([work("reset", walk(1))])[0].frames
    engine.generate([work("reset", walk(4, 3.0), 1)])
    engine.reset("reset")
    np.testing.assert_array_equal(engine.generate([work("reset", walk(1))])[0].frames, first)
    engine.close_session("reset")

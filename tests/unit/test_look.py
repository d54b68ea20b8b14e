"""Look deltas in the key timeline: whole degrees turned at the look keys' rate, bounded, cancelled, released."""

import numpy as np
import pytest

from inference.controls import KEY_INDEX, LOOK_BACKLOG_FRAMES, CameraRig, KeyTimeline

L, J, I, K = (KEY_INDEX[k] for k in "ljik")


def degrees(keys: np.ndarray, positive: int, negative: int) -> float:
    return float((keys[:, positive] - keys[:, negative]).sum() * 2.0)


def test_a_look_delta_turns_its_whole_angle_at_one_look_key_per_frame():
    """10 degrees right is 5 frames of L, however long the sampled frames are, starting at its arrival frame."""
    tl = KeyTimeline()
    tl.look(10.0, 0.0, 0.1)
    first = tl.sample(0.0, 0.4, 4)  # frames of 0.1 s: the look arrives at the start of frame 1
    second = tl.sample(0.4, 0.55, 4)  # shorter frames: the rest still plays one key per frame
    assert first[:, L].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert second[:, L].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert degrees(np.vstack([first, second]), L, J) == pytest.approx(10.0)


def test_yaw_and_pitch_play_side_by_side_and_end_at_the_key_pose():
    """A look of yaw +6 / pitch -4 gives the pose of 3 frames of L and 2 of K, with no translation."""
    tl = KeyTimeline()
    tl.look(6.0, -4.0, 0.0)
    keys = tl.sample(0.0, 0.5, 8)
    assert keys[:, L].sum() == pytest.approx(3.0) and keys[:, K].sum() == pytest.approx(2.0)
    pose = CameraRig().advance(keys)[-1]
    rows = np.zeros((5, 8), np.float32)
    rows[:3, L] = 1.0
    rows[3:, K] = 1.0
    assert np.allclose(pose, CameraRig().advance(rows)[-1], atol=1e-12)
    assert np.allclose(pose[:3, 3], 0.0)


def test_a_turn_back_cancels_the_queued_turn_and_keys_add_within_one_key():
    """Right 10 then left 4 before anything plays nets 6 right; a held L leaves no room for more right turn."""
    tl = KeyTimeline()
    tl.look(10.0, 0.0, 0.0)
    tl.look(-4.0, 0.0, 0.0)
    assert degrees(tl.sample(0.0, 1.0, 16), L, J) == pytest.approx(6.0)
    held = KeyTimeline()
    held.press("l", 0.0)
    held.look(4.0, 0.0, 0.0)
    keys = held.sample(0.0, 0.25, 4)
    assert keys[:, L].tolist() == [1.0] * 4 and keys.max() <= 1.0


def test_the_queue_is_bounded_and_release_drops_what_has_not_played():
    """More than the backlog is cut and counted; releasing all keys drops the turn still queued."""
    tl = KeyTimeline()
    cut = tl.look(200.0, 0.0, 0.0)
    assert cut == pytest.approx(200.0 - 2.0 * LOOK_BACKLOG_FRAMES) and tl.looks.cut_deg == pytest.approx(cut)
    tl.sample(0.0, 0.25, 4)
    tl.release_all(0.3)
    assert tl.looks.pending_deg == 0.0
    assert not tl.sample(0.25, 0.5, 4).any()
    with pytest.raises(ValueError, match="finite"):
        tl.look(float("nan"), 0.0, 1.0)

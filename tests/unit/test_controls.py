"""Key timeline sampling and camera-rig integration (inference.controls)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.controls import (
    KEY_INDEX,
    KEY_ORDER,
    CameraRig,
    KeyTimeline,
    canonical_key,
    first_frame_reflecting,
)

DT = 1.0 / 16


def held_rows(names: str, frames: int) -> np.ndarray:
    rows = np.zeros((frames, 8), dtype=np.float32)
    for key in names:
        rows[:, KEY_INDEX[key]] = 1.0
    return rows


def column(fractions: np.ndarray, key: str) -> list[float]:
    return [round(float(v), 6) for v in fractions[:, KEY_INDEX[key]]]


def test_key_names_are_canonicalised():
    """Arrow keys alias to i,k,j,l and names are case-insensitive, in the fixed column order."""
    assert KEY_ORDER == ("w", "a", "s", "d", "i", "j", "k", "l")
    assert [canonical_key(k) for k in ("W", "ArrowUp", "arrowdown", "ARROWLEFT", "arrowRight")] == [
        "w", "i", "k", "j", "l"]


def test_unknown_key_names_the_allowed_keys():
    """An unknown key raises ValueError listing the allowed names."""
    with pytest.raises(ValueError, match="'q'.*w, a, s, d, i, j, k, l, arrowup"):
        canonical_key("q")


def test_rig_reproduces_reference_trajectory(each_set):
    """Full-key rows of each fixture set integrate to the reference c2ws_traj within 1e-9."""
    from safetensors.numpy import load_file

    ref = load_file(str(each_set / "camera.safetensors"))
    poses = CameraRig().advance(ref["keys_wasdijkl"])
    traj = np.concatenate([np.eye(4)[None], poses])
    assert traj.shape == ref["c2ws_traj"].shape
    assert np.abs(traj - ref["c2ws_traj"]).max() <= 1e-9


def test_sixteen_frames_of_w_move_forward():
    """One second of W moves 0.8 units along +z from the start pose, without turning."""
    rig = CameraRig()
    pose = rig.advance(held_rows("w", 16))[-1]
    np.testing.assert_allclose(pose[:3, 3], [0.0, 0.0, 0.8], atol=1e-5)
    np.testing.assert_allclose(pose[:3, :3], np.eye(3), atol=1e-12)


def test_w_after_yawing_right_moves_along_plus_x():
    """After 45 frames of L (90 degrees right) W moves along +x, the old right."""
    rig = CameraRig()
    rig.advance(held_rows("l", 45))
    start = rig.pose[:3, 3]
    end = rig.advance(held_rows("w", 16))[-1][:3, 3]
    np.testing.assert_allclose(end - start, [0.8, 0.0, 0.0], atol=1e-5)


def test_strafe_and_back_directions():
    """D moves along +x, A along -x and S along -z from the start pose."""
    for names, direction in (("d", [1, 0, 0]), ("a", [-1, 0, 0]), ("s", [0, 0, -1])):
        pose = CameraRig().advance(held_rows(names, 1))[-1]
        np.testing.assert_allclose(pose[:3, 3], 0.05 * np.array(direction), atol=1e-7)


def test_half_frame_press_moves_half_a_step():
    """W pressed in the middle of a frame moves that frame 0.025 units."""
    timeline = KeyTimeline()
    timeline.press("w", 0.5 * DT)
    fractions = timeline.sample(0.0, DT, 1)
    assert column(fractions, "w") == [0.5]
    pose = CameraRig().advance(fractions)[-1]
    np.testing.assert_allclose(pose[:3, 3], [0.0, 0.0, 0.025], atol=1e-7)


def test_pitch_saturates_at_85_degrees():
    """Holding I for 60 frames pitches up to exactly 85 degrees and no further; K comes back down."""
    rig = CameraRig()
    poses = rig.advance(held_rows("i", 60))
    assert rig.pitch_deg == pytest.approx(85.0)
    forward = poses[-1][:3, 2]
    assert np.degrees(np.arcsin(-forward[1])) == pytest.approx(85.0)
    rig.advance(held_rows("k", 5))
    assert rig.pitch_deg == pytest.approx(75.0)


def test_newest_press_wins_between_opposite_keys():
    """S pressed while W is held takes over; W counts again after S is released."""
    timeline = KeyTimeline()
    timeline.press("w", 0.0)
    timeline.press("s", 1 * DT)
    timeline.release("s", 3 * DT)
    timeline.release("w", 5 * DT)
    fractions = timeline.sample(0.0, 6 * DT, 6)
    assert column(fractions, "w") == [1, 0, 0, 1, 1, 0]
    assert column(fractions, "s") == [0, 1, 1, 0, 0, 0]


def test_auto_repeat_keeps_the_original_press():
    """A repeated down of a held key keeps its press time, so a newer opposite press still wins."""
    timeline = KeyTimeline()
    timeline.press("w", 0.0)
    timeline.press("s", 1 * DT)
    timeline.press("w", 2 * DT)  # auto-repeat
    fractions = timeline.sample(0.0, 4 * DT, 4)
    assert column(fractions, "w") == [1, 0, 0, 0]
    assert column(fractions, "s") == [0, 1, 1, 1]
    assert timeline.held(4 * DT) == {"s"}


def test_release_of_unheld_key_is_ignored():
    """An up for a key that is not held changes nothing."""
    timeline = KeyTimeline()
    timeline.release("d", 0.0)
    timeline.press("d", DT)
    assert column(timeline.sample(0.0, 2 * DT, 2), "d") == [0, 1]


def test_fractions_follow_sub_frame_edges():
    """Edges inside frames give the exact held fraction of each frame interval."""
    timeline = KeyTimeline()
    timeline.press("j", 0.25 * DT)
    timeline.release("j", 2.75 * DT)
    timeline.press("J", 3.1 * DT)
    timeline.release("arrowleft", 3.3 * DT)
    fractions = timeline.sample(0.0, 4 * DT, 4)
    assert column(fractions, "j") == pytest.approx([0.75, 1.0, 0.75, 0.2])
    assert fractions.dtype == np.float32 and fractions.shape == (4, 8)


def test_edges_out_of_order_are_replayed_in_time_order():
    """A release recorded before its (earlier-stamped) press still yields the press-then-release hold."""
    timeline = KeyTimeline()
    timeline.release("w", 2 * DT)
    timeline.press("w", 1 * DT)
    assert column(timeline.sample(0.0, 3 * DT, 3), "w") == [0, 1, 0]


def test_late_edges_move_to_the_horizon_keeping_the_hold():
    """Edges stamped inside an already-sampled range act from its end and keep their hold length."""
    timeline = KeyTimeline()
    timeline.sample(0.0, 4 * DT, 4)
    assert timeline.press("w", 2 * DT) == pytest.approx(4 * DT)
    assert timeline.release("w", 3.5 * DT) == pytest.approx(5.5 * DT)
    assert column(timeline.sample(4 * DT, 8 * DT, 4), "w") == [1, 0.5, 0, 0]


def test_sampling_prunes_old_edges():
    """Edges before a sample's start are folded into state, so memory stays bounded over a long session."""
    timeline = KeyTimeline()
    for n in range(1000):
        t = n * 12 * DT
        timeline.press("w", t + DT)
        timeline.release("w", t + 2 * DT)
        timeline.sample(t, t + 12 * DT, 12)
    assert timeline.event_count <= 2
    assert timeline.held(1e9) == set()


def test_flood_of_edges_is_capped():
    """Ten thousand toggles keep at most max_events edges and end in the right state."""
    timeline = KeyTimeline(max_events=64)
    for n in range(10_000):
        timeline.edge("d", "down" if n % 2 == 0 else "up", n * 1e-5)
    timeline.press("d", 1.0)
    assert timeline.event_count <= 64
    assert timeline.folded_by_cap > 0
    assert timeline.held(1.0) == {"d"}
    assert column(timeline.sample(1.0, 1.0 + DT, 1), "d") == [1]


def test_release_all_and_held():
    """release_all lets go of every key from its time on."""
    timeline = KeyTimeline()
    for key in "wdl":
        timeline.press(key, 0.0)
    assert timeline.held(0.5) == {"w", "d", "l"}
    timeline.release_all(1.0)
    assert timeline.held(0.99) == {"w", "d", "l"}
    assert timeline.held(1.0) == set()


def test_first_frame_reflecting_an_edge():
    """An edge is first reflected by the frame whose interval contains it; later edges by none."""
    assert first_frame_reflecting(0.0, 0.0, 12 * DT, 12) == 0
    assert first_frame_reflecting(5.5 * DT, 0.0, 12 * DT, 12) == 5
    assert first_frame_reflecting(-1.0, 0.0, 12 * DT, 12) == 0
    assert first_frame_reflecting(12 * DT, 0.0, 12 * DT, 12) is None


def test_bad_inputs_are_rejected_with_the_offending_value():
    """Bad actions, sample ranges and key-row shapes raise ValueError naming the value."""
    timeline = KeyTimeline()
    with pytest.raises(ValueError, match="'hold'"):
        timeline.edge("w", "hold", 0.0)
    with pytest.raises(ValueError, match="t1 > t0"):
        timeline.sample(1.0, 1.0, 3)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        CameraRig().advance(np.zeros((3, 4)))


def test_reset_returns_to_identity():
    """reset() puts the rig back at the identity pose and level pitch."""
    rig = CameraRig()
    rig.advance(held_rows("wil", 10))
    rig.reset()
    assert np.array_equal(rig.pose, np.eye(4)) and rig.pitch_deg == 0.0

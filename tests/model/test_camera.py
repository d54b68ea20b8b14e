"""LingBot camera condition: whole-clip reference path and the streaming per-chunk rule."""

from __future__ import annotations

import numpy as np
import pytest

from inference.conformance import Fixture
from inference.controls import KEY_INDEX, CameraRig
from inference.models import camera
from inference.models.camera import StreamingCamera, StreamingCameraConfig

H, W = 32, 48
# The reference rounds absolute poses to float32 before differencing them into per-latent steps up to 8x
# smaller (1.6 units travelled vs 0.2 per latent) and scales the steps to unit length: up to 8 float32 eps
# of the unit scale apart from the float64 streaming path; twice that is allowed.
STREAM_ATOL = 16 * float(np.finfo(np.float32).eps)


def rows(names: str, frames: int) -> np.ndarray:
    out = np.zeros((frames, 8), dtype=np.float32)
    for key in names:
        out[:, KEY_INDEX[key]] = 1.0
    return out


def trajectory(keys: np.ndarray) -> np.ndarray:
    """Identity then the pose after each key row, like the reference trajectory."""
    return np.concatenate([np.eye(4)[None], CameraRig().advance(keys)])


def stream(cam: StreamingCamera, traj: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """Feed a whole trajectory chunk by chunk (9 frames, then 12 each) and concatenate on latent frames."""
    outs, start = [], 0
    while start + cam.expected_frames() <= len(traj):
        end = start + cam.expected_frames()
        outs.append(cam.chunk(traj[start:end], None if keys is None else keys[start:end]))
        start = end
    return np.concatenate(outs, axis=2)


def test_camera_conformance_group_passes(each_set):
    """Every check of the camera conformance group is within tolerance on each shared fixture set."""
    from inference.conformance.camera import run

    checks = list(run(Fixture(each_set)))
    assert {c.name for c in checks} >= {"camera/c2ws_traj", "camera/Ks_transformed", "camera/tgt_indices",
                                        "camera/c2ws_interp", "camera/c2ws_rel", "camera/c2ws_plucker_emb"}
    failed = [f"{c.name} {c.max_abs_err:.3e} {c.note}" for c in checks if not c.passed]
    assert not failed


def test_slerp_halfway_between_rotations():
    """Halfway between identity and a 90-degree yaw the interpolated pose is a 45-degree yaw and half the translation."""
    a = np.eye(4)
    b = np.eye(4)
    b[:3, :3] = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]
    b[:3, 3] = [2.0, 0.0, 4.0]
    mid = camera.interpolate_poses(np.stack([a, b]), np.array([0.5]))[0]
    c = np.cos(np.pi / 4)
    np.testing.assert_allclose(mid[:3, :3], [[c, 0, c], [0, 1, 0], [-c, 0, c]], atol=1e-6)
    np.testing.assert_allclose(mid[:3, 3], [1.0, 0.0, 2.0], atol=1e-6)


def test_quaternion_round_trip_covers_every_branch():
    """Matrix -> quaternion -> matrix is the identity map, including 180-degree turns about each axis."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(50, 4))
    mats = camera.quaternion_to_rotation(q)
    flips = np.stack([np.diag(d) for d in ([1, -1, -1], [-1, 1, -1], [-1, -1, 1])]).astype(float)
    mats = np.concatenate([mats, flips])
    np.testing.assert_allclose(camera.quaternion_to_rotation(camera.rotation_to_quaternion(mats)), mats, atol=1e-12)


def test_fold_puts_pixel_block_offsets_into_channels():
    """Pixel (8*hh + c1, 8*ww + c2) component c lands at channel c*64 + c1*8 + c2 of latent cell (hh, ww)."""
    per_pixel = np.random.default_rng(1).normal(size=(2, 16, 24, 6)).astype(np.float32)
    folded = camera.fold_pixel_blocks(per_pixel)
    assert folded.shape == (1, 384, 2, 2, 3)
    f, hh, ww, c1, c2, c = 1, 1, 2, 3, 5, 4
    assert folded[0, c * 64 + c1 * 8 + c2, f, hh, ww] == per_pixel[f, 8 * hh + c1, 8 * ww + c2, c]


@pytest.mark.parametrize("names", ["w", "wd", "l", "j", "wl", "sj", "wi"])
def test_streaming_equals_reference_on_constant_speed_motion(names):
    """Streaming a 33-frame constant-key clip in chunks gives the reference whole-clip tensor to float32 tolerance."""
    traj = trajectory(rows(names, 32))
    reference = camera.clip_camera_condition(traj, camera.EXAMPLE_INTRINSICS, H, W, chunk_size=3)
    streamed = stream(StreamingCamera(StreamingCameraConfig(height=H, width=W)), traj)
    assert streamed.shape == reference.shape == (1, 384, 9, 4, 6)
    np.testing.assert_allclose(streamed, reference, atol=STREAM_ATOL, rtol=0)


def test_streaming_equals_reference_over_81_frames_of_w_and_yaw():
    """Over the reference default of 81 frames (7 chunks) W+L streams to the reference result."""
    traj = trajectory(rows("wl", 80))
    reference = camera.clip_camera_condition(traj, camera.EXAMPLE_INTRINSICS, H, W)
    streamed = stream(StreamingCamera(StreamingCameraConfig(height=H, width=W)), traj)
    assert streamed.shape == reference.shape == (1, 384, 21, 4, 6)
    np.testing.assert_allclose(streamed, reference, atol=STREAM_ATOL, rtol=0)


def test_translation_equals_reference_at_the_37_frame_spacing():
    """With latents 4.5 frames apart (37 frames) constant W still streams to the reference result."""
    traj = trajectory(rows("w", 36))
    reference = camera.clip_camera_condition(traj, camera.EXAMPLE_INTRINSICS, H, W, frame_num=37)
    streamed = stream(StreamingCamera(StreamingCameraConfig(height=H, width=W)), traj)
    np.testing.assert_allclose(streamed[:, :, :9], reference, atol=STREAM_ATOL, rtol=0)


def origins(embedding: np.ndarray) -> np.ndarray:
    """(1, 384, F, h, w) -> (F, 3) ray origin of the top-left pixel of each latent frame."""
    return embedding[0, [0, 64, 128], :, 0, 0].T


def test_standing_still_gives_zero_translation():
    """A session that never moves gets finite, zero ray origins and level rays in every chunk."""
    cam = StreamingCamera(StreamingCameraConfig(height=H, width=W))
    still = trajectory(rows("", 32))
    emb = stream(cam, still)
    assert np.isfinite(emb).all()
    assert np.abs(origins(emb)).max() == 0.0
    np.testing.assert_array_equal(emb[:, 192:], np.broadcast_to(emb[:, 192:, :1], emb[:, 192:].shape))


def test_stop_and_start():
    """Moving, stopping and moving again gives unit translations while moving and zero while stopped."""
    keys = np.concatenate([rows("w", 8), rows("", 12), rows("w", 12)])
    emb = stream(StreamingCamera(StreamingCameraConfig(height=H, width=W)), trajectory(keys))
    z = origins(emb)[:, 2]
    np.testing.assert_allclose(z, [0, 1, 1, 0, 0, 0, 1, 1, 1], atol=1e-5)


def test_brief_tap_is_not_blown_up_to_full_speed():
    """A tenth-of-a-frame W tap from rest moves a tenth of a full step relative to the floor scale."""
    keys = rows("", 8)
    keys[2, KEY_INDEX["w"]] = 0.1
    emb = StreamingCamera(StreamingCameraConfig(height=H, width=W)).chunk(trajectory(keys))
    np.testing.assert_allclose(origins(emb)[:, 2], [0.0, 0.05, 0.0], atol=1e-6)


def test_reset_starts_a_new_first_chunk():
    """After reset the camera expects a 9-frame first chunk again and reproduces the first result."""
    cam = StreamingCamera(StreamingCameraConfig(height=H, width=W))
    traj = trajectory(rows("wl", 20))
    first = cam.chunk(traj[:9])
    assert cam.expected_frames() == 12
    cam.chunk(traj[9:21])
    cam.reset()
    assert cam.expected_frames() == 9
    np.testing.assert_array_equal(cam.chunk(traj[:9]), first)


def test_wrong_chunk_length_names_the_expected_shape():
    """A chunk with the wrong number of poses raises ValueError naming the expected shape."""
    cam = StreamingCamera(StreamingCameraConfig(height=H, width=W))
    with pytest.raises(ValueError, match=r"\(9, 4, 4\)"):
        cam.chunk(np.tile(np.eye(4), (12, 1, 1)))


def test_act_variant_layout():
    """The act condition holds the cam ray directions in channels 0-191 and each latent's W/A/S/D fractions in 192-447."""
    keys = np.concatenate([rows("", 1), rows("wl", 7), rows("d", 13)])  # row i produced pose i
    keys[4, KEY_INDEX["w"]] = 0.5
    traj = trajectory(keys[1:])
    act = stream(StreamingCamera(StreamingCameraConfig(height=H, width=W, control_type="act")), traj, keys)
    cam = stream(StreamingCamera(StreamingCameraConfig(height=H, width=W)), traj)
    assert act.shape == (1, 448, 6, 4, 6)
    np.testing.assert_array_equal(act[:, :192], cam[:, 192:])
    wasd = act[0, 192::64, :, 0, 0].T  # (latents, 4) one value per component block
    expected = keys[[0, 4, 8, 12, 16, 20], :4]
    np.testing.assert_array_equal(wasd, expected)
    assert np.all(act[:, 192:] == act[:, 192:, :, :1, :1])  # constant over every pixel


def test_act_needs_keys():
    """The act variant without key fractions raises ValueError saying what it needs."""
    cam = StreamingCamera(StreamingCameraConfig(height=H, width=W, control_type="act"))
    with pytest.raises(ValueError, match=r"\(9, 8\) key fractions"):
        cam.chunk(np.tile(np.eye(4), (9, 1, 1)))


def test_whole_clip_act_takes_every_fourth_action_row():
    """The whole-clip act condition uses W/A/S/D rows 0, 4, 8, ... of the per-frame actions."""
    wasd = np.random.default_rng(2).integers(0, 2, size=(33, 4)).astype(np.float32)
    traj = trajectory(rows("wj", 32))
    emb = camera.clip_camera_condition(traj, camera.EXAMPLE_INTRINSICS, H, W, wasd=wasd)
    assert emb.shape == (1, 448, 9, 4, 6)
    np.testing.assert_array_equal(emb[0, 192::64, :, 2, 3].T, wasd[::4])


def stream_from_fixture_keys(act_set):
    """The act set's clip as a session streams it: key rows -> CameraRig poses -> 9, 12, 12, ... frame chunks.

    A stream's key row i is what produced pose i (the first row is the start pose's, empty), so it is the
    reference's action row i - 1. Returns (reference tensors, stream key rows, streamed condition).
    """
    fixture = Fixture(act_set)
    ref = fixture.arrays("camera.safetensors")
    frames = int(fixture.meta["camera"]["frame_num_used"])
    keys = np.concatenate([np.zeros((1, 8), np.float32), ref["keys_wasdijkl"][:frames - 1]])
    poses = CameraRig().advance(keys)  # the identity first: row 0 holds no key
    assert np.abs(poses - ref["c2ws_traj"][:frames]).max() <= 1e-9
    config = StreamingCameraConfig(height=H, width=W, control_type="act",
                                   intrinsics=tuple(float(v) for v in ref["intrinsics_480x832"][0]))
    return ref, keys, stream(StreamingCamera(config), poses, keys)


def test_streaming_act_from_keys_equals_the_whole_clip_condition_of_the_same_rows(act_set):
    """Chunk by chunk from keys, the act condition equals the whole-clip act condition built from the same poses
    and per-frame key rows: ray directions to float32 rounding, W/A/S/D exactly."""
    ref, keys, streamed = stream_from_fixture_keys(act_set)
    poses = CameraRig().advance(keys)
    whole = camera.clip_camera_condition(poses, ref["intrinsics_480x832"], H, W, wasd=keys[:, :4])
    assert streamed.shape == whole.shape == ref["c2ws_plucker_emb"].shape == (1, 448, 12, 4, 6)
    np.testing.assert_allclose(streamed[:, :192], whole[:, :192], atol=STREAM_ATOL, rtol=0)
    np.testing.assert_array_equal(streamed[:, 192:], whole[:, 192:])


def test_streaming_act_matches_the_reference_clip_up_to_its_one_frame_lookahead(act_set):
    """Against the fixture's reference condition, streamed ray directions agree to float32 rounding; each
    latent's W/A/S/D is the reference's except where the keys changed on that latent's own frame, where the
    stream (which cannot see the next frame) keeps the state that produced the frame."""
    ref, keys, streamed = stream_from_fixture_keys(act_set)
    golden = ref["c2ws_plucker_emb"]
    np.testing.assert_allclose(streamed[:, :192], golden[:, :192], atol=STREAM_ATOL, rtol=0)
    stream_wasd = streamed[0, 192::64, :, 0, 0].T  # (latents, 4): one value per component block
    assert np.all(streamed[:, 192:] == streamed[:, 192:, :, :1, :1])  # constant over every pixel
    np.testing.assert_array_equal(stream_wasd, keys[::4, :4])
    actions = np.concatenate([np.zeros((1, 4), np.float32), ref["keys_wasdijkl"][:, :4]])  # row i+1: action i
    steady = [k for k in range(len(stream_wasd)) if np.array_equal(actions[4 * k], actions[4 * k + 1])]
    np.testing.assert_array_equal(stream_wasd[steady], ref["wasd_action_sub"][steady])
    assert len(stream_wasd) // 2 < len(steady) < len(stream_wasd)  # the clip changes keys on a few latent frames

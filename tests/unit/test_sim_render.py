"""Geometry of the sim renderer: camera motion moves the picture the way a real camera would."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from inference.sim import Camera, Scene, Terrain, decompose_pose, intrinsics, look_from_prompt
from inference.sim.fastmath import arctan, arctan2, power
from inference.sim import kernels
from inference.sim.render import RenderConfig, render_view, warm_up_kernels
from inference.sim.shared import attach, publish

W, H = 832, 480


def pose(*, yaw_deg: float = 0.0, pitch_deg: float = 0.0, forward: float = 0.0) -> np.ndarray:
    """Camera-to-world pose (OpenCV axes) with yaw about world y, pitch up about camera x."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    r_yaw = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    r_pitch = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    out = np.eye(4)
    out[:3, :3] = r_yaw @ r_pitch
    out[:3, 3] = r_yaw @ np.array([0.0, 0.0, forward])
    return out


def best_shift(a: np.ndarray, b: np.ndarray, axis: int, max_shift: int) -> int:
    """The integer shift d (along axis) minimising |a[i] - b[i + d]| over the overlap."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    n = a.shape[axis]
    errs = {}
    for d in range(-max_shift, max_shift + 1):
        lo, hi = max(0, -d), min(n, n - d)
        pa = np.take(a, range(lo, hi), axis=axis)
        pb = np.take(b, range(lo + d, hi + d), axis=axis)
        errs[d] = float(np.mean(np.abs(pa - pb)))
    return min(errs, key=errs.get)


@pytest.fixture(scope="module")
def scene() -> Scene:
    return Scene(Terrain(3), look_from_prompt(""))


@pytest.fixture(scope="module")
def camera() -> Camera:
    return Camera(W, H)


def test_intrinsics_are_lingbots_scaled_per_axis():
    """832x480 uses LingBot's pinhole intrinsics and 1280x720 scales them per axis."""
    assert intrinsics(832, 480) == pytest.approx((502.9116, 503.10812, 415.77786, 239.77779))
    fx, fy, cx, cy = intrinsics(1280, 720)
    assert fx == pytest.approx(502.9116 * 1280 / 832) and fy == pytest.approx(503.10812 * 1.5)
    pfx, pfy, _, _ = intrinsics(480, 832)
    assert pfx == pytest.approx(pfy)  # portrait is not squashed 3:1


def test_pose_decomposition_recovers_yaw_and_pitch():
    """Yaw and pitch of a controls-style pose come back exactly, even at 85 degrees pitch."""
    cp = decompose_pose(pose(yaw_deg=-37.0, pitch_deg=85.0, forward=2.0))
    assert math.degrees(cp.yaw) == pytest.approx(-37.0)
    assert math.degrees(cp.pitch) == pytest.approx(85.0)


def test_yaw_right_shifts_picture_left_by_focal_tangent(scene, camera):
    """Turning 2 degrees right moves the horizon band left by about fx*tan(2 deg) pixels."""
    a = render_view(scene, camera, pose()).rgb
    b = render_view(scene, camera, pose(yaw_deg=2.0)).rgb
    # Mountains and far shore around the horizon, within 11 degrees of the centre where a
    # 2-degree turn moves every column by fx*tan(2 deg) to within half a pixel.
    band = (slice(150, 260), slice(316, 516))
    shift = best_shift(a[band].mean(axis=2), b[band].mean(axis=2), 1, 30)
    expected = camera.fx * math.tan(math.radians(2.0))
    assert shift == pytest.approx(-expected, abs=1.5)


def block_motion(a: np.ndarray, b: np.ndarray, rows: slice, cols: slice, reach: int) -> tuple:
    """(dy, dx) that best moves the block a[rows, cols] onto b (mean absolute difference)."""
    block = a[rows, cols].astype(np.float32)
    best, best_err = (0, 0), np.inf
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            cand = b[rows.start + dy: rows.stop + dy, cols.start + dx: cols.stop + dx]
            if cand.shape != block.shape:
                continue
            err = float(np.abs(cand - block).mean())
            if err < best_err:
                best, best_err = (dy, dx), err
    return best


def test_forward_motion_moves_ground_down_and_outward(scene, camera):
    """Walking forward moves ground patches away from the image centre (down and outward)."""
    a = render_view(scene, camera, pose()).rgb.mean(axis=2)[::2, ::2]  # half resolution
    b = render_view(scene, camera, pose(forward=0.25)).rgb.mean(axis=2)[::2, ::2]
    cx, cy = camera.cx / 2, camera.cy / 2
    blocks = {"left": (slice(180, 225), slice(20, 110)), "centre": (slice(195, 230), slice(170, 245)),
              "right": (slice(180, 225), slice(305, 395))}
    for name, (rows, cols) in blocks.items():
        dy, dx = block_motion(a, b, rows, cols, 20)
        out_y = (rows.start + rows.stop) / 2 - cy
        out_x = (cols.start + cols.stop) / 2 - cx
        assert dy * out_y + dx * out_x > 0, name  # the patch moved away from the centre
        if name == "centre":
            assert dy > 0  # the ground ahead slides toward the bottom edge


def test_pitch_up_shows_more_sky(scene, camera):
    """Pitching up 20 degrees raises the share of sky pixels (infinite depth)."""
    level = render_view(scene, camera, pose(), with_depth=True).depth
    up = render_view(scene, camera, pose(pitch_deg=20.0), with_depth=True).depth
    assert np.isinf(up).mean() > np.isinf(level).mean() + 0.2


@pytest.mark.parametrize("pitch", [85.0, -85.0])
def test_extreme_pitch_renders_finite(scene, camera, pitch):
    """Looking 85 degrees up shows nearly all sky, 85 down nearly all ground, without NaN."""
    view = render_view(scene, camera, pose(pitch_deg=pitch, forward=0.3), with_depth=True)
    assert view.rgb.shape == (H, W, 3) and not np.isnan(view.depth).any()
    sky = np.isinf(view.depth).mean()
    assert (sky > 0.95) if pitch > 0 else (sky < 0.05)
    assert view.rgb.std() > 2.0  # a picture, not a flat fill


def test_eye_rides_the_terrain(scene, camera):
    """The eye stays at the configured height above the ground under it while walking."""
    cfg = RenderConfig()
    for forward in (0.0, 5.0, 20.0):
        view = render_view(scene, camera, pose(yaw_deg=30.0, forward=forward), config=cfg)
        mx = forward * math.sin(math.radians(30.0)) * cfg.metres_per_unit
        mz = forward * math.cos(math.radians(30.0)) * cfg.metres_per_unit
        ground = max(scene.terrain.ground_height(mx, mz), scene.water_level)
        assert view.eye[1] - ground == pytest.approx(cfg.eye_height_m, abs=1e-4)


def test_prompt_change_keeps_geometry(scene, camera):
    """Night and snow looks of the same seed have the identical depth buffer, different colours."""
    day = render_view(scene, camera, pose(yaw_deg=10.0), with_depth=True)
    other = Scene(scene.terrain, look_from_prompt("snowy night"))
    night = render_view(other, camera, pose(yaw_deg=10.0), with_depth=True)
    np.testing.assert_array_equal(day.depth, night.depth)
    assert np.abs(day.rgb.astype(int) - night.rgb).mean() > 20


def test_fast_arctan_and_power_match_numpy():
    """The renderer's float32 arctan/atan2 agree with numpy to 1e-6 rad and power is exact."""
    x = np.linspace(-40, 40, 20001, dtype=np.float32)
    assert np.abs(arctan(x) - np.arctan(x.astype(np.float64))).max() < 1e-6
    y = np.sin(np.linspace(0, 20, 20001)).astype(np.float32)
    assert np.abs(arctan2(y, x) - np.arctan2(y, x)).max() < 1e-6
    base = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(power(base, 13), base.astype(np.float64) ** 13, rtol=1e-5, atol=1e-12)


def test_warm_up_leaves_nothing_to_compile_for_real_frames(scene, camera):
    """After warm-up, frames of a scene painted here or mapped read-only from a worker's memfd
    (with and without depth) run without compiling another loop, so no frame waits seconds."""
    warm_up_kernels()
    loops = [getattr(kernels, name) for name in ("march_columns", "shade_columns", "sky_cells", "cells_to_pixels")]
    compiled = [len(loop.signatures) for loop in loops]
    fd, layout = publish(scene)
    try:
        shared = attach(fd, layout)
    finally:
        os.close(fd)
    for s in (scene, shared):
        for p in (pose(), pose(pitch_deg=60.0), pose(pitch_deg=-60.0)):
            render_view(s, camera, p)
            render_view(s, camera, p, with_depth=True)
    assert [len(loop.signatures) for loop in loops] == compiled


def test_shared_scene_renders_the_same_frame(scene, camera):
    """A scene mapped from shared memory renders exactly the pixels and depths of the painted one."""
    fd, layout = publish(scene)
    try:
        shared = attach(fd, layout)
    finally:
        os.close(fd)
    for p in (pose(yaw_deg=33.0, forward=3.0), pose(pitch_deg=-70.0)):
        a = render_view(scene, camera, p, with_depth=True)
        b = render_view(shared, camera, p, with_depth=True)
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.depth, b.depth)

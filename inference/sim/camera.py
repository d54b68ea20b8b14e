"""Pinhole camera of a sim frame: intrinsics, pose decomposition and per-pitch ray tables.

Intrinsics are LingBot's for 832x480 (fx 502.91, fy 503.11, cx 415.78,
cy 239.78 pixels) scaled per axis to the target size, exactly as the model's
Plucker embedding scales them. Where per-axis scaling would squash the
picture by more than 6% (portrait sizes such as 480x832, 704x1024, and odd
/test-frame sizes) both focal lengths become their geometric mean, so a
portrait frame is a rotated landscape camera instead of a 3:1 squash.

A sim camera never rolls: a pose is reduced to a position, a yaw about
world up (-y) and a pitch about the camera x axis. Each pixel's ray is
stored as (relative azimuth, elevation); azimuth is measured from world +z
towards +x and is relative to the yaw, so one table serves every yaw.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .fastmath import arctan2

REF_SIZE = (832, 480)
REF_INTRINSICS = (502.9116, 503.10812, 415.77786, 239.77779)  # fx, fy, cx, cy at 832x480
MAX_ANISOTROPY = 0.06  # larger per-axis focal mismatch switches to one focal length
KNOT = 8  # pixels between exactly computed ray angles along a row
GRID_CELL_BUDGET = 1.3 * 832 * 480  # grid cells a frame may shade before the grid gets coarser


def intrinsics(width: int, height: int) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels for a width x height frame (see the module docstring)."""
    sx, sy = width / REF_SIZE[0], height / REF_SIZE[1]
    fx, fy, cx, cy = REF_INTRINSICS
    fx, fy, cx, cy = fx * sx, fy * sy, cx * sx, cy * sy
    if abs(fx / fy - 1.0) > MAX_ANISOTROPY:
        fx = fy = math.sqrt(fx * fy)
    return fx, fy, cx, cy


@dataclass(kw_only=True)
class CameraPose:
    """A roll-free camera: position in pose units and heading angles in radians."""

    x: float  # pose translation along world x (right at the start pose)
    y: float  # pose translation along world y (down); negative lifts the eye
    z: float  # pose translation along world z (forward at the start pose)
    yaw: float  # heading, radians from +z towards +x
    pitch: float  # radians above the horizon (positive looks up)


def decompose_pose(pose: np.ndarray) -> CameraPose:
    """Camera-to-world 4x4 (OpenCV axes) -> position, yaw and pitch; any roll is dropped."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise ValueError(f"pose must be a finite 4x4 matrix, got shape {pose.shape}")
    right, forward = pose[:3, 0], pose[:3, 2]
    yaw = math.atan2(-right[2], right[0])  # the right vector stays horizontal without roll
    level = forward[0] * math.sin(yaw) + forward[2] * math.cos(yaw)
    pitch = math.atan2(-forward[1], level)
    return CameraPose(x=pose[0, 3], y=pose[1, 3], z=pose[2, 3], yaw=yaw, pitch=pitch)


@dataclass(kw_only=True)
class RayGrid:
    """An (elevation, azimuth) grid covering one pitch's view, and each pixel's cell in it."""

    az0: float  # relative azimuth of column 0 (radians)
    daz: float  # azimuth step per column
    n_az: int  # columns
    el0: float  # elevation of row 0 (radians), rows go up
    del_: float  # elevation step per row
    n_el: int  # rows
    pixel_cell: np.ndarray  # (H*W,) int32 flat index row*n_az + col of each pixel's nearest cell
    rows: object = None  # render.RowTerms: per-row terms of this grid, derived once by the renderer


def session_camera(width: int, height: int) -> Camera:
    """The camera an engine session uses: full grid resolution up to about 832x480 pixels,
    coarser above so 1280x720 costs little more than 832x480 (pixels still sample exact rays)."""
    oversample = min(1.0, math.sqrt(GRID_CELL_BUDGET / (width * height)))
    return Camera(width, height, oversample=oversample)


class Camera:
    """Frame size, intrinsics and a small cache of ray grids keyed by pitch."""

    def __init__(self, width: int, height: int, *, oversample: float = 1.0,
                 max_columns_per_px: float = 1.6, cache: int = 16):
        self.width, self.height = int(width), int(height)
        self.fx, self.fy, self.cx, self.cy = intrinsics(self.width, self.height)
        self.oversample = oversample  # grid cells per pixel at the image centre
        self.max_columns = int(max_columns_per_px * self.width)  # cap for views around a pole
        self._grids: OrderedDict[float, RayGrid] = OrderedDict()
        self._cache = cache
        u = (np.arange(self.width, dtype=np.float64) + 0.5 - self.cx) / self.fx
        v = (np.arange(self.height, dtype=np.float64) + 0.5 - self.cy) / self.fy
        self._u, self._v = np.meshgrid(u, v)  # (H, W) camera-plane coordinates

    def has_grid(self, pitch: float) -> bool:
        """Whether the ray grid for `pitch` is already built."""
        return round(pitch, 7) in self._grids

    def grid(self, pitch: float) -> RayGrid:
        """The ray grid for `pitch` radians (cached; poses from the controls repeat pitches)."""
        key = round(pitch, 7)
        grid = self._grids.get(key)
        if grid is None:
            grid = self._build_grid(key)
            self._grids[key] = grid
            if len(self._grids) > self._cache:
                self._grids.popitem(last=False)
        else:
            self._grids.move_to_end(key)
        return grid

    def _build_grid(self, pitch: float) -> RayGrid:
        az, el = self._pixel_angles(pitch)  # (H, W) each
        step = 1.0 / (self.oversample * max(self.fx, self.fy))
        az0, az1 = float(az.min()), float(az.max())
        n_az = min(int(math.ceil((az1 - az0) / step)) + 1, self.max_columns)
        daz = max((az1 - az0) / max(n_az - 1, 1), 1e-9)
        el0, el1 = float(el.min()), float(el.max())
        n_el = int(math.ceil((el1 - el0) / step)) + 1
        del_ = max((el1 - el0) / max(n_el - 1, 1), 1e-9)
        col = np.rint((az - az0) * (1.0 / daz)).astype(np.int32)
        row = np.rint((el - el0) * (1.0 / del_)).astype(np.int32)
        cell = (row * n_az + col).reshape(-1)
        return RayGrid(az0=az0, daz=daz, n_az=n_az, el0=el0, del_=del_, n_el=n_el, pixel_cell=cell)

    def _pixel_angles(self, pitch: float) -> tuple[np.ndarray, np.ndarray]:
        """(azimuth, elevation) of every pixel ray at `pitch`; (H, W) float32 each.

        Along a row both angles are smooth in u, so they are computed exactly every
        KNOT pixels and interpolated linearly in between (error far below a cell).
        Rows where a midpoint check shows a larger error (next to the zenith or
        nadir, or where the azimuth wraps) are computed exactly.
        """
        c, s = math.cos(pitch), math.sin(pitch)
        v = self._v[:, :1]  # (H, 1)
        up, fwd = -v * c + s, v * s + c  # per-row constants of the pitched rays
        n_seg = -(-self.width // KNOT)
        knots = np.arange(n_seg + 1) * KNOT  # pixel columns; the last may lie past the edge
        u_k = ((knots + 0.5 - self.cx) / self.fx)[None]  # (1, n_seg + 1)
        az_k, el_k = _angles(u_k, up, fwd)  # (H, n_seg + 1)
        az_m, el_m = _angles(u_k[:, :-1] + 0.5 * KNOT / self.fx, up, fwd)  # segment midpoints
        err = np.maximum(np.abs(0.5 * (az_k[:, 1:] + az_k[:, :-1]) - az_m),
                         np.abs(0.5 * (el_k[:, 1:] + el_k[:, :-1]) - el_m)).max(axis=1)
        frac = (np.arange(KNOT, dtype=np.float32) / KNOT)[None, None]  # (1, 1, KNOT)

        def interpolate(k: np.ndarray) -> np.ndarray:
            k = k.astype(np.float32)
            out = k[:, :-1, None] + (k[:, 1:] - k[:, :-1])[..., None] * frac  # (H, n_seg, KNOT)
            return out.reshape(self.height, -1)[:, : self.width]

        az, el = interpolate(az_k), interpolate(el_k)
        exact = np.nonzero(err > 0.05 / max(self.fx, self.fy))[0]  # 0.05 px, or the azimuth wraps
        if exact.size:
            az[exact], el[exact] = _angles(self._u[exact], up[exact], fwd[exact])
        return az, el


def _angles(side: np.ndarray, up: np.ndarray, fwd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth and elevation (float32) of rays with camera-plane x `side` in a pitched frame."""
    side = np.asarray(side, np.float32)
    up, fwd = np.asarray(up, np.float32), np.asarray(fwd, np.float32)
    return arctan2(side, fwd), arctan2(up, np.sqrt(side * side + fwd * fwd))

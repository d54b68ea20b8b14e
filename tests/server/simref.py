"""Reference renders for server tests: what the sim stream must show at a pose, with the same engine code in-process."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from inference.controls import KEY_INDEX, CameraRig
from inference.engine.base import ChunkWork, SessionSpec
from inference.sim import SimEngine


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def pose_after(**frames_held: int) -> np.ndarray:
    """(4, 4) pose after holding keys for whole frames from the start pose, e.g. pose_after(l=5, k=3)."""
    rows = []
    for key, count in frames_held.items():
        row = np.zeros(8, np.float32)
        row[KEY_INDEX[key]] = 1.0
        rows += [row] * count
    return CameraRig().advance(np.asarray(rows))[-1] if rows else np.eye(4)


class Reference:
    """Renders what the stream should show at a given pose, with the same engine code."""

    def __init__(self, prompt: str, seed: int, width: int = 832, height: int = 480):
        self.engine = SimEngine(chunk_frames=1)
        self.engine.open_session(SessionSpec(session_id="ref", prompt=prompt, seed=seed, width=width, height=height))
        self._cache: dict[float, np.ndarray] = {}

    def set_prompt(self, prompt: str) -> None:
        self.engine.set_prompt("ref", prompt)
        self._cache.clear()

    def at_pose(self, pose: np.ndarray) -> np.ndarray:
        work = ChunkWork(session_id="ref", chunk_index=0, poses=np.asarray(pose, np.float64)[None],
                         keys=np.zeros((1, 8), np.float32))
        return self.engine.generate([work])[0].frames[0].astype(np.float32)

    def at_forward(self, z: float) -> np.ndarray:
        z = round(float(z), 4)
        if z not in self._cache:
            pose = np.eye(4)
            pose[2, 3] = z  # OpenCV axes: +z is forward
            self._cache[z] = self.at_pose(pose)
        return self._cache[z]

    def best_forward(self, frame: np.ndarray, zs=np.arange(0.0, 2.51, 0.05)) -> tuple[float, float, float]:
        """(best z, error at best z, error at z=0)."""
        errs = [diff(frame, self.at_forward(float(z))) for z in zs]
        i = int(np.argmin(errs))
        return float(zs[i]), errs[i], diff(frame, self.at_forward(0.0))

    def locate_forward(self, frame: np.ndarray, top: float = 3.0) -> tuple[float, float]:
        """(z, error) of the closest forward offset, to 0.005 units (a frame of walking is 0.05)."""
        z, _, _ = self.best_forward(frame, zs=np.arange(0.0, top + 0.01, 0.05))
        fine = np.arange(max(0.0, z - 0.05), z + 0.0501, 0.005)
        z, err, _ = self.best_forward(frame, zs=fine)
        return z, err

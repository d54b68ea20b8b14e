"""Time the sim engine's frames on one core: render, JPEG (PIL quality 85), implied fps.

Run pinned to one core, e.g. `taskset -c 0 python bench/sim_render.py`. Walks and turns
along a key-driven trajectory (forward, yaw, pitch) and prints per-frame milliseconds
(median and best, since other processes may share the core) and fps against 16 fps.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.sim import Camera, Scene, Terrain, look_from_prompt, render_view  # noqa: E402


def trajectory(frames: int) -> np.ndarray:
    """(F, 4, 4) poses like held keys: walk 0.05/frame; every 16 frames alternately turn
    2 deg/frame (yaw), or pitch 2 deg/frame up then down for 8 frames each."""
    poses = np.empty((frames, 4, 4))
    x = z = yaw = pitch = 0.0
    for i in range(frames):
        phase = (i // 16) % 4
        if phase in (1, 3):
            yaw += math.radians(2.0)
        elif phase == 2:
            pitch += math.radians(2.0) * (1 if i % 16 < 8 else -1)
        x += 0.05 * math.sin(yaw)
        z += 0.05 * math.cos(yaw)
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # positive looks up
        poses[i] = np.eye(4)
        poses[i, :3, :3] = r_yaw @ r_pitch
        poses[i, :3, 3] = (x, 0.0, z)
    return poses


def bench(scene: Scene, width: int, height: int, frames: int) -> dict[str, float]:
    camera = Camera(width, height)
    poses = trajectory(frames)
    render_view(scene, camera, poses[0])  # warm the ray-grid cache like a running session
    render_ms, jpeg_ms = [], []
    for pose in poses:
        t0 = time.perf_counter()
        rgb = render_view(scene, camera, pose).rgb
        t1 = time.perf_counter()
        Image.fromarray(rgb).save(io.BytesIO(), "JPEG", quality=85)
        t2 = time.perf_counter()
        render_ms.append((t1 - t0) * 1e3)
        jpeg_ms.append((t2 - t1) * 1e3)
    r, j = np.array(render_ms), np.array(jpeg_ms)
    total = r + j
    return {"render": float(np.median(r)), "jpeg": float(np.median(j)),
            "total": float(np.median(total)), "best_total": float(total.min())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--prompts", nargs="*", default=["", "snowy forest at sunset"])
    args = parser.parse_args()
    terrain = Terrain(args.seed)
    for prompt in args.prompts:
        scene = Scene(terrain, look_from_prompt(prompt))
        for width, height in ((832, 480), (1280, 720)):
            m = bench(scene, width, height, args.frames)
            fps = 1000.0 / m["total"]
            print(f"{width}x{height} prompt={prompt!r:26} render {m['render']:6.1f} ms  "
                  f"jpeg {m['jpeg']:5.1f} ms  total {m['total']:6.1f} ms (best {m['best_total']:5.1f})"
                  f"  -> {fps:5.1f} fps, fps/16 = {fps / 16:4.2f}x")


if __name__ == "__main__":
    main()

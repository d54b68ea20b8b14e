"""Time the sim engine's frames on one core: render, JPEG (PIL quality 85), implied fps.

Run pinned to one core, e.g. `taskset -c 0 python bench/sim_render.py`. Walks and turns
along a key-driven trajectory (forward, yaw, pitch) and prints per-frame milliseconds
(median wall time, and median CPU time of this thread, which other processes sharing the
core do not inflate) and the implied fps against 16 fps; `--stages` adds the mean CPU time
of each stage of the renderer.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.sim import Scene, Terrain, look_from_prompt, render_view  # noqa: E402
from inference.sim import march as march_mod  # noqa: E402
from inference.sim import render as render_mod  # noqa: E402
from inference.sim import sky as sky_mod  # noqa: E402
from inference.sim.camera import session_camera  # noqa: E402
from inference.sim.render import warm_up_kernels  # noqa: E402


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


STAGES = {  # (module, function) -> stage name; everything else in render_view is "glue"
    (march_mod, "march_columns"): "march (terrain sampling, haze, visibility)",
    (sky_mod, "sky_cells"): "sky cells (half resolution)",
    (render_mod, "shade_columns"): "cell shading (ground, detail, water, sky copy)",
    (render_mod, "cells_to_pixels"): "pixel copy",
}


class StageTimer:
    """Wraps the renderer's compiled loops to add up the CPU time of each (this thread)."""

    def __init__(self):
        self.ms = dict.fromkeys(STAGES.values(), 0.0)
        self.saved = []
        for (module, name), stage in STAGES.items():
            fn = getattr(module, name)
            self.saved.append((module, name, fn))
            setattr(module, name, self._timed(fn, stage))

    def _timed(self, fn, stage):
        def run(*args):
            t0 = time.thread_time()
            try:
                return fn(*args)
            finally:
                self.ms[stage] += (time.thread_time() - t0) * 1e3
        return run

    def restore(self) -> None:
        for module, name, fn in self.saved:
            setattr(module, name, fn)


def bench(scene: Scene, width: int, height: int, frames: int, stages: StageTimer | None = None) -> dict[str, float]:
    camera = session_camera(width, height)  # as SimEngine sessions use
    poses = trajectory(frames)
    render_view(scene, camera, poses[0])  # warm the ray-grid cache like a running session
    if stages is not None:
        stages.ms = dict.fromkeys(stages.ms, 0.0)
    wall, cpu = [], []  # per frame: (render, jpeg) milliseconds
    for pose in poses:
        t0, c0 = time.perf_counter(), time.thread_time()
        rgb = render_view(scene, camera, pose).rgb
        t1, c1 = time.perf_counter(), time.thread_time()
        Image.fromarray(rgb).save(io.BytesIO(), "JPEG", quality=85)
        t2, c2 = time.perf_counter(), time.thread_time()
        wall.append(((t1 - t0) * 1e3, (t2 - t1) * 1e3))
        cpu.append(((c1 - c0) * 1e3, (c2 - c1) * 1e3))
    w, c = np.array(wall), np.array(cpu)
    return {"render": float(np.median(c[:, 0])), "render_mean": float(np.mean(c[:, 0])),
            "jpeg": float(np.median(c[:, 1])),
            "total": float(np.median(c.sum(axis=1))), "p90": float(np.percentile(c.sum(axis=1), 90)),
            "wall": float(np.median(w.sum(axis=1)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--prompts", nargs="*", default=["", "snowy forest at sunset"])
    parser.add_argument("--stages", action="store_true", help="also print mean CPU ms per frame of each stage")
    args = parser.parse_args()
    terrain = Terrain(args.seed)
    warm_up_kernels()
    stages = StageTimer() if args.stages else None
    for prompt in args.prompts:
        scene = Scene(terrain, look_from_prompt(prompt))
        for width, height in ((832, 480), (1280, 720)):
            m = bench(scene, width, height, args.frames, stages)
            fps = 1000.0 / m["total"]
            print(f"{width}x{height} prompt={prompt!r:26} CPU ms/frame: render {m['render']:5.1f}"
                  f" + jpeg {m['jpeg']:4.1f} = {m['total']:5.1f} (p90 {m['p90']:5.1f}; wall"
                  f" {m['wall']:5.1f})  -> {fps:5.1f} fps, fps/16 = {fps / 16:4.2f}x")
            if stages is not None:
                glue = m["render_mean"] - sum(stages.ms.values()) / args.frames
                rows = [*stages.ms.items(), ("glue (numpy set-up, per-row/column terms)", glue * args.frames)]
                for stage, ms in rows:
                    print(f"    {stage:48} {ms / args.frames:5.2f} ms")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Host time per chunk of the camera condition: host fold (numpy) vs rays kept and rotated on the device.

    python bench/camera_condition.py [--size 832*480] [--chunks 20] [--device cpu|cuda]

One thread, as torchrun sets OMP_NUM_THREADS=1 for every rank. Prints ms
per chunk of: the host path (pose math + numpy fold + copy of the folded
condition to the device), the device path (pose math + one (n, 12) copy +
rotation on the device) and the host-side pose math alone (what the host
still does per chunk when the device is a GPU), and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # as torchrun sets it; numpy's BLAS reads it at import
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.controls import CameraRig  # noqa: E402
from inference.models.camera import StreamingCamera, StreamingCameraConfig  # noqa: E402


def trajectory(frames: int) -> np.ndarray:
    keys = np.zeros((frames, 8), np.float32)
    keys[:, 0] = 1.0  # W
    keys[:, 5] = 1.0  # J: yaw while walking
    return np.concatenate([np.eye(4)[None], CameraRig().advance(keys)])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_chunk_ms(paths: dict, config: StreamingCameraConfig, traj: np.ndarray, chunks: int,
                 device: torch.device) -> dict[str, float]:
    """Median ms per chunk of each path; the paths take turns chunk by chunk, so machine load hits them alike."""
    cameras = {name: StreamingCamera(config) for name in paths}
    times: dict[str, list[float]] = {name: [] for name in paths}
    start = 0
    for _ in range(chunks):
        end = start + cameras[next(iter(paths))].expected_frames()
        for name, run in paths.items():
            t0 = time.perf_counter()
            run(cameras[name], traj[start:end])
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1000)
        start = end
    return {name: float(np.median(t[1:])) for name, t in times.items()}  # the first chunk is shorter (9 frames)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="832*480")
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.split("*"))
    device = torch.device(args.device)
    config = StreamingCameraConfig(height=height, width=width)
    traj = trajectory(12 * args.chunks + 1)
    paths = {
        "host fold + copy": lambda cam, p: torch.from_numpy(cam.chunk(p)).to(device),
        "device rotation": lambda cam, p: cam.chunk_on(p, None, device),
        "pose math alone": lambda cam, p: cam.advance(p, None),
    }
    per_chunk_ms(paths, config, traj, 2, device)  # warm: directions are made once per size and device
    ms = per_chunk_ms(paths, config, traj, args.chunks, device)
    print(f"camera condition at {args.size} on {device}, 1 thread, median of {args.chunks - 1} chunks of 12 frames")
    for name, value in ms.items():
        print(f"  {name:18s} {value:8.2f} ms/chunk")
    print(f"  host fold / device rotation: {ms['host fold + copy'] / ms['device rotation']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

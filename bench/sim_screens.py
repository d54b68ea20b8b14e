"""Save sim frames of fixed poses as PNGs, or compare two such folders (PSNR, max difference).

    python bench/sim_screens.py save artifacts/sim/before
    python bench/sim_screens.py save --workers 2 artifacts/sim/after-workers
    python bench/sim_screens.py compare artifacts/sim/before artifacts/sim/after-workers

`save` renders every (prompt, seed, size, pose) case below with the in-process
renderer, or with `--workers N` through a SimEngine's render workers (raw
pixels, not JPEG); `compare` prints per-image PSNR (inf when identical) and the largest
channel difference, so a renderer change can be checked for what it did to the picture.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.engine.base import SessionSpec  # noqa: E402
from inference.sim import Scene, SimEngine, Terrain, look_from_prompt, render_view  # noqa: E402
from inference.sim.camera import session_camera  # noqa: E402

PROMPTS = ("", "snowy forest at sunset", "desert at night", "misty lake at dawn")
SIZES = ((832, 480), (1280, 720), (480, 832))


def pose(*, yaw_deg: float = 0.0, pitch_deg: float = 0.0, forward: float = 0.0, side: float = 0.0) -> np.ndarray:
    """Camera-to-world pose (OpenCV axes): yaw about world y, pitch up about camera x."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    r_yaw = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    r_pitch = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    out = np.eye(4)
    out[:3, :3] = r_yaw @ r_pitch
    out[:3, 3] = (side, 0.0, forward)
    return out


POSES = {
    "start": pose(),
    "walk": pose(forward=6.0, yaw_deg=12.0),
    "turned": pose(yaw_deg=140.0, forward=2.0),
    "up30": pose(pitch_deg=30.0, yaw_deg=-60.0),
    "down45": pose(pitch_deg=-45.0, forward=1.0),
    "far": pose(forward=400.0, side=-250.0, yaw_deg=75.0, pitch_deg=-8.0),
}


def cases(seed: int):
    """(name, prompt, size, pose) for every saved picture."""
    for prompt in PROMPTS:
        tag = prompt.replace(" ", "_") or "default"
        for name, p in POSES.items():
            yield f"s{seed}_{tag}_832x480_{name}", prompt, (832, 480), p
    for w, h in SIZES[1:]:
        for name in ("start", "down45"):
            yield f"s{seed}_default_{w}x{h}_{name}", "", (w, h), POSES[name]


def save(folder: Path, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    terrain = Terrain(seed)
    scenes = {}
    for name, prompt, (w, h), p in cases(seed):
        scene = scenes.get(prompt) or scenes.setdefault(prompt, Scene(terrain, look_from_prompt(prompt)))
        Image.fromarray(render_view(scene, session_camera(w, h), p).rgb).save(folder / f"{name}.png")
    print(f"saved {len(list(folder.glob('*.png')))} pictures in {folder}")


def save_from_workers(folder: Path, seed: int, workers: int) -> None:
    """The same pictures rendered by a SimEngine's render workers (raw pixels over the pipe)."""
    folder.mkdir(parents=True, exist_ok=True)
    engine = SimEngine(workers=workers)
    engine.warm_up()
    try:
        for name, prompt, (w, h), p in cases(seed):
            engine.open_session(SessionSpec(session_id=name, prompt=prompt, seed=seed, width=w, height=h))
            entry = engine.session(name).entry
            ((data,), _), = engine.worlds.render([(entry, w, h, p[None])], quality=None)
            Image.fromarray(np.frombuffer(data, np.uint8).reshape(h, w, 3)).save(folder / f"{name}.png")
            engine.close_session(name)
    finally:
        engine.close()
    print(f"saved {len(list(folder.glob('*.png')))} pictures from {workers} render workers in {folder}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def compare(before: Path, after: Path) -> None:
    worst = math.inf
    for path in sorted(before.glob("*.png")):
        a = np.asarray(Image.open(path).convert("RGB"))
        b = np.asarray(Image.open(after / path.name).convert("RGB"))
        value = psnr(a, b)
        worst = min(worst, value)
        print(f"{path.stem:44} PSNR {value:6.1f} dB  max diff {int(np.abs(a.astype(int) - b).max()):3d}")
    print(f"lowest PSNR {worst:.1f} dB (inf = identical pixels)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("folder", type=Path)
    s.add_argument("--seed", type=int, default=3)
    s.add_argument("--workers", type=int, default=0, help="render through a SimEngine with this many workers")
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.cmd == "save" and args.workers > 1:
        save_from_workers(args.folder, args.seed, args.workers)
    elif args.cmd == "save":
        save(args.folder, args.seed)
    else:
        compare(args.before, args.after)


if __name__ == "__main__":
    main()

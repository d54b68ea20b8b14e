"""Serving benchmark: concurrent sim sessions at >= 15.5 fps, frame intervals, CPU per frame, control latency.

Starts a real server on free loopback ports, connects N WebSocket clients at
once (N = 1, 2, 3, ... until one falls below the target), and prints one line
per N plus the control-latency run. Each N is measured over one window shared by
its clients, which opens a second after every one of them streams (so no world
is being built in it). All numbers come from this one run.

    python bench/serving.py [--seconds 8] [--max-sessions 6] [--chunk-frames 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parent.parent
TARGET_FPS = 15.5


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (the sim engine's render workers)."""
    total = cpu_seconds(pid)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError):
            pass  # exited meanwhile
    return total


def start_server(run_dir: Path, chunk_frames: int, max_sessions: int) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, HTTP_PORT="0", WS_PORT="0", WS_HOST="127.0.0.1", HTTP_HOST="127.0.0.1",
               RUN_DIR=str(run_dir), CHUNK_FRAMES=str(chunk_frames), MAX_SESSIONS=str(max_sessions),
               ADMISSION_CAPACITY="off", LOG_LEVEL="WARNING")  # the bench measures beyond capacity itself
    proc = subprocess.Popen([sys.executable, "ws_server.py"], cwd=REPO, env=env,
                            stdout=open(run_dir / "server.log", "ab"), stderr=subprocess.STDOUT)
    import urllib.request

    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            ports = json.loads((run_dir / "ports.json").read_text())
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/ready", timeout=2) as r:
                if r.status == 200:
                    ports["engine_pid"] = int((run_dir / "engine.pid").read_text())
                    return proc, ports
        except Exception:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready")


WARM_S = 1.0  # after the last session's first frame, before the measured window opens


class Window:
    """The measured window that all N clients share: it opens WARM_S after every session streams
    (each has had its first frame, so every world is built) and lasts `seconds`."""

    def __init__(self, n: int, seconds: float):
        self.n, self.seconds = n, seconds
        self.started = 0
        self.all_streaming = asyncio.Event()
        self.start = self.end = None

    def first_frame(self, now: float) -> None:
        self.started += 1
        if self.started == self.n:
            self.start = now + WARM_S
            self.end = self.start + self.seconds
            self.all_streaming.set()


async def client(url: str, window: Window, seed: int, toggle_keys: bool = False) -> dict:
    times, stats = [], []
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "init", "prompt": "green hills at sunset", "seed": seed}))
        key_down, next_toggle = False, 0.0
        async for msg in ws:
            now = time.monotonic()
            if isinstance(msg, bytes):
                if not times:
                    window.first_frame(now)
                times.append(now)
            else:
                obj = json.loads(msg)
                if obj.get("type") == "stats":
                    stats.append(obj)
            if toggle_keys and times and now >= next_toggle:
                key_down = not key_down
                await ws.send(json.dumps({"type": "control", "key": "w" if seed % 2 else "j",
                                          "action": "down" if key_down else "up"}))
                next_toggle = now + 0.37 + 0.11 * (len(times) % 3)
            if window.end is not None and now >= window.end:
                break
    seen = [t for t in times if window.start <= t <= window.end]
    intervals = np.diff(seen) * 1000 if len(seen) > 2 else np.array([0.0])
    fps = (len(seen) - 1) / (seen[-1] - seen[0]) if len(seen) > 2 else 0.0
    return {"fps": fps, "frames": len(seen), "p95_interval_ms": float(np.percentile(intervals, 95)),
            "stats": stats[-1] if stats else {}}


async def cpu_in_window(window: Window, pids: tuple[int, int]) -> tuple[float, float]:
    """CPU seconds of (engine with its render workers, front) spent inside the window."""
    await window.all_streaming.wait()
    await asyncio.sleep(max(0.0, window.start - time.monotonic()))
    cpu0 = (tree_cpu_seconds(pids[0]), cpu_seconds(pids[1]))
    await asyncio.sleep(max(0.0, window.end - time.monotonic()))
    return tree_cpu_seconds(pids[0]) - cpu0[0], cpu_seconds(pids[1]) - cpu0[1]


async def run_n(ports: dict, n: int, seconds: float, toggle_keys: bool = False,
                pids: tuple[int, int] | None = None) -> tuple[list[dict], tuple[float, float] | None]:
    """N clients at once (seeds 1..N); their results and, given (engine, front) pids, the CPU used."""
    url = f"ws://127.0.0.1:{ports['ws']}/"
    window = Window(n, seconds)
    clients = asyncio.gather(*(client(url, window, seed=i + 1, toggle_keys=toggle_keys) for i in range(n)))
    if pids is None:
        return await clients, None
    results, cpu = await asyncio.gather(clients, cpu_in_window(window, pids))
    return results, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--max-sessions", type=int, default=6)
    ap.add_argument("--chunk-frames", type=int, default=4)
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    proc, ports = start_server(run_dir, args.chunk_frames, args.max_sessions)
    try:
        print(f"server pid {proc.pid}, engine pid {ports['engine_pid']}, chunk {args.chunk_frames} frames, "
              f"{os.cpu_count()} cores")
        print(" N  min_fps  mean_fps  p95_interval_ms  engine_cpu_ms/frame (model / jpeg)  front_cpu_ms/frame  load1")
        print("    (measured while all N stream, from 1 s after the last one's first frame; engine CPU counts its"
              " render workers)")
        sustained = 0
        for n in range(1, args.max_sessions + 1):
            results, (engine_cpu, front_cpu) = asyncio.run(run_n(ports, n, args.seconds,
                                                                 pids=(ports["engine_pid"], proc.pid)))
            frames = sum(r["frames"] for r in results)
            fps = [r["fps"] for r in results]
            st = results[0]["stats"]
            print(f"{n:2d}  {min(fps):7.2f}  {np.mean(fps):8.2f}  {max(r['p95_interval_ms'] for r in results):15.1f}"
                  f"  {1000 * engine_cpu / frames:8.2f} ({st.get('model_ms_per_frame')} / "
                  f"{st.get('jpeg_ms_per_frame')})  {1000 * front_cpu / frames:18.2f}"
                  f"  {os.getloadavg()[0]:5.2f}")
            if min(fps) < TARGET_FPS:
                break
            sustained = n
        print(f"sessions sustained at >= {TARGET_FPS} fps each: {sustained} "
              f"(ratio to one session: {sustained:.0f}x)")
        lat = asyncio.run(run_n(ports, 1, max(10.0, args.seconds), toggle_keys=True))[0][0]["stats"]
        cl = lat.get("control_latency", {})
        chunk_ms = 1000 * args.chunk_frames / 16
        print(f"control latency at {args.chunk_frames}-frame chunks: p50 {cl.get('p50')} ms, p95 {cl.get('p95')} ms "
              f"(one chunk of video = {chunk_ms:.0f} ms; p50/chunk = {(cl.get('p50') or 0) / chunk_ms:.2f}x)")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()

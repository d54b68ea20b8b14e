"""Serving benchmark: concurrent sim sessions at >= 15.5 fps, frame intervals, CPU per frame, control latency.

Starts a real server on free loopback ports, connects N WebSocket clients at
once (N = 1, 2, 3, ... until one falls below the target), and prints one line
per N plus the control-latency run. All numbers come from this one run.

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
               LOG_LEVEL="WARNING")
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


async def client(url: str, seconds: float, seed: int, toggle_keys: bool = False) -> dict:
    times, stats = [], []
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "init", "prompt": "green hills at sunset", "seed": seed}))
        t_end = None
        key_down, next_toggle = False, 0.0
        async for msg in ws:
            now = time.monotonic()
            if isinstance(msg, bytes):
                times.append(now)
                if t_end is None:
                    t_end = now + seconds
            else:
                obj = json.loads(msg)
                if obj.get("type") == "stats":
                    stats.append(obj)
            if toggle_keys and t_end is not None and now >= next_toggle:
                key_down = not key_down
                await ws.send(json.dumps({"type": "control", "key": "w" if seed % 2 else "j",
                                          "action": "down" if key_down else "up"}))
                next_toggle = now + 0.37 + 0.11 * (len(times) % 3)
            if t_end is not None and now >= t_end:
                break
    warm = [t for t in times if t >= times[0] + 1.0]  # skip the first second (start-up)
    intervals = np.diff(warm) * 1000 if len(warm) > 2 else np.array([0.0])
    fps = (len(warm) - 1) / (warm[-1] - warm[0]) if len(warm) > 2 else 0.0
    return {"fps": fps, "frames": len(times), "p95_interval_ms": float(np.percentile(intervals, 95)),
            "stats": stats[-1] if stats else {}}


async def run_n(ports: dict, n: int, seconds: float, toggle_keys: bool = False) -> list[dict]:
    url = f"ws://127.0.0.1:{ports['ws']}/"
    return await asyncio.gather(*(client(url, seconds, seed=i + 1, toggle_keys=toggle_keys) for i in range(n)))


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
        print("    (engine CPU counts its render workers and the world builds of the sessions that open)")
        sustained = 0
        for n in range(1, args.max_sessions + 1):
            cpu0 = (tree_cpu_seconds(ports["engine_pid"]), cpu_seconds(proc.pid))
            results = asyncio.run(run_n(ports, n, args.seconds))
            cpu1 = (tree_cpu_seconds(ports["engine_pid"]), cpu_seconds(proc.pid))
            frames = sum(r["frames"] for r in results)
            fps = [r["fps"] for r in results]
            st = results[0]["stats"]
            print(f"{n:2d}  {min(fps):7.2f}  {np.mean(fps):8.2f}  {max(r['p95_interval_ms'] for r in results):15.1f}"
                  f"  {1000 * (cpu1[0] - cpu0[0]) / frames:8.2f} ({st.get('model_ms_per_frame')} / "
                  f"{st.get('jpeg_ms_per_frame')})  {1000 * (cpu1[1] - cpu0[1]) / frames:18.2f}"
                  f"  {os.getloadavg()[0]:5.2f}")
            if min(fps) < TARGET_FPS:
                break
            sustained = n
        print(f"sessions sustained at >= {TARGET_FPS} fps each: {sustained} "
              f"(ratio to one session: {sustained:.0f}x)")
        lat = asyncio.run(run_n(ports, 1, max(10.0, args.seconds), toggle_keys=True))[0]["stats"]
        cl = lat.get("control_latency", {})
        chunk_ms = 1000 * args.chunk_frames / 16
        print(f"control latency at {args.chunk_frames}-frame chunks: p50 {cl.get('p50')} ms, p95 {cl.get('p95')} ms "
              f"(one chunk of video = {chunk_ms:.0f} ms; p50/chunk = {(cl.get('p50') or 0) / chunk_ms:.2f}x)")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()

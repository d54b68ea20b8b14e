"""Resume gap: milliseconds from reconnecting to the first frame of a resumed world, next to a fresh world's start.

Starts a real sim server on free loopback ports. Each trial walks a world
for a moment, drops the socket without a close frame (a network blip), then
times a new connection: TCP + WebSocket handshake, `resume`, first frame.
The same is timed for a fresh `init` on a new connection (whose first
frame needs the engine to build the world). Prints every trial, the
medians and their ratio, all from this one run.

    python bench/resume_gap.py [--trials 10] [--size 832*480]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

REPO = Path(__file__).resolve().parent.parent


def start_server(run_dir: Path) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, HTTP_PORT="0", WS_PORT="0", WS_HOST="127.0.0.1", HTTP_HOST="127.0.0.1",
               RUN_DIR=str(run_dir), RESUME_GRACE_S="30", LOG_LEVEL="WARNING", ADMISSION_CAPACITY="off")
    proc = subprocess.Popen([sys.executable, "ws_server.py"], cwd=REPO, env=env,
                            stdout=open(run_dir / "server.log", "ab"), stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            ports = json.loads((run_dir / "ports.json").read_text())
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, ports
        except Exception:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready")


def first_frame(ws, until: str) -> tuple[dict, float]:
    """Read until the `until` reply and the first frame after it; (reply, monotonic time of that frame)."""
    reply = None
    while True:
        msg = ws.recv(timeout=30)
        if isinstance(msg, bytes):
            if reply is not None:
                return reply, time.monotonic()
            continue
        obj = json.loads(msg)
        if obj.get("type") == until:
            reply = obj
        elif obj.get("type") == "error":
            raise SystemExit(f"server refused: {obj}")


def trial(url: str, size: str, seed: int) -> tuple[float, float]:
    """(fresh world: connect -> first frame ms, resume: reconnect -> first frame ms)."""
    t0 = time.monotonic()
    with connect(url, max_size=None) as ws:
        ws.send(json.dumps({"type": "init", "prompt": "rolling hills by a lake", "seed": seed, "size": size}))
        reply, t_first = first_frame(ws, "session")
        fresh_ms = (t_first - t0) * 1000
        frames = 1
        ws.send(json.dumps({"type": "control", "key": "w", "action": "down"}))
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            frames += isinstance(ws.recv(timeout=5), bytes)
        ws.close_socket()  # no close frame: the server keeps the world
    time.sleep(0.2)
    t0 = time.monotonic()
    with connect(url, max_size=None) as ws:
        ws.send(json.dumps({"type": "resume", "resume_token": reply["resume_token"], "frames": frames}))
        _, t_first = first_frame(ws, "resumed")
    return fresh_ms, (t_first - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--size", default="832*480")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, ports = start_server(Path(tmp))
        try:
            url = f"ws://127.0.0.1:{ports['ws']}/"
            fresh, resumed = [], []
            for i in range(args.trials):
                f, r = trial(url, args.size, seed=100 + i)
                fresh.append(f)
                resumed.append(r)
                print(f"trial {i + 1:2d}: fresh world {f:7.1f} ms   resume {r:6.1f} ms")
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    f50, r50 = statistics.median(fresh), statistics.median(resumed)
    print(f"median: fresh world {f50:.1f} ms, resume {r50:.1f} ms (max {max(resumed):.1f} ms); "
          f"resume / fresh = {r50 / f50:.3f}")


if __name__ == "__main__":
    main()

"""The process-level stages of bench/gpu_check.py: a tiny-checkpoint server end to end, the 2-rank conformance."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.gpu_stages import CheckRun, StageFailed, StageSkipped
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
SERVER_READY_S = 240.0
FRAMES_WANTED = 21  # the first chunk (9) and one later chunk (12)


def http(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def start_server(model_dir: Path, run_dir: Path) -> tuple[subprocess.Popen, dict]:
    """`python ws_server.py` with the tiny lingbot-fast checkpoint on loopback ports; returns (process, ports)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ENGINE="lingbot-fast", MODEL_DIR=str(model_dir), HTTP_PORT="0", WS_PORT="0",
               HTTP_HOST="127.0.0.1", WS_HOST="127.0.0.1", RUN_DIR=str(run_dir), ADMISSION_CAPACITY="off",
               ENGINE_STEP_TIMEOUT_S="120", ENGINE_START_TIMEOUT_S=str(int(SERVER_READY_S)), NUM_GPUS="0")
    log = open(run_dir / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "ws_server.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVER_READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StageFailed(f"server exited with {proc.returncode}: {log_tail(run_dir)}")
        try:
            ports = json.loads((run_dir / "ports.json").read_text())
            if http(f"http://127.0.0.1:{ports['http']}/ready")[0] == 200:
                return proc, ports
        except (FileNotFoundError, ValueError, KeyError, OSError):
            pass
        time.sleep(0.25)
    stop(proc)
    raise StageFailed(f"server not ready within {SERVER_READY_S:.0f} s: {log_tail(run_dir)}")


def log_tail(run_dir: Path, n: int = 8) -> str:
    lines = []
    for name in ("server.log", "engine.log"):
        path = run_dir / name
        if path.is_file():
            lines += path.read_text(errors="replace").splitlines()[-n:]
    return " | ".join(lines)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stream(ws_port: int, seconds: float) -> tuple[dict, list[tuple[float, bytes]]]:
    """One session at 48*32: (its session reply, [(arrival time, JPEG)])."""
    from websockets.sync.client import connect

    frames, reply = [], {}
    with connect(f"ws://127.0.0.1:{ws_port}/", max_size=None, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "init", "prompt": "green hills", "seed": 7, "size": "48*32"}))
        t0 = deadline = time.monotonic()
        deadline += seconds
        while time.monotonic() < deadline and len(frames) < FRAMES_WANTED:
            try:
                msg = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            if isinstance(msg, bytes):
                frames.append((time.monotonic() - t0, msg))
            elif json.loads(msg).get("type") in ("session", "error"):
                reply = reply or json.loads(msg)
    return reply, frames


def server_end_to_end(run: CheckRun) -> dict:
    """A tiny lingbot-fast server on this machine's device: frames arrive as JPEGs, /status and /test-frame work."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_checkpoint(Path(tmp) / "tiny", seed=1)
        proc, ports = start_server(model_dir, Path(tmp) / "run")
        try:
            reply, frames = stream(ports["ws"], 120.0)
            status = json.loads(http(f"http://127.0.0.1:{ports['http']}/status")[1])
            code, test_frame = http(f"http://127.0.0.1:{ports['http']}/test-frame?width=64&height=48", 60.0)
        finally:
            stop(proc)
            tail = log_tail(Path(tmp) / "run")
    if reply.get("type") != "session":
        raise StageFailed(f"no session: {reply} {tail}")
    if len(frames) < FRAMES_WANTED or not all(f.startswith(b"\xff\xd8") for _, f in frames):
        raise StageFailed(f"{len(frames)} frames (want {FRAMES_WANTED} JPEGs): {tail}")
    size = Image.open(io.BytesIO(frames[0][1])).size
    engine = status.get("engine", {})
    rank0 = (engine.get("ranks") or [{}])[0]
    if size != (48, 32) or code != 200 or not test_frame.startswith(b"\xff\xd8"):
        raise StageFailed(f"frame size {size}, /test-frame {code}")
    if rank0.get("memory_used_mb") is None or not rank0.get("attention"):
        raise StageFailed(f"/status engine.ranks lacks memory or attention: {rank0}")
    return {"device": engine.get("device"), "frames": len(frames), "first_frame_s": frames[0][0],
            "rank0": rank0, "summary": f"{len(frames)} JPEG frames on {engine.get('device')}, first after "
            f"{frames[0][0]:.1f} s; rank 0 uses {rank0['memory_used_mb']:.0f} MiB (planned "
            f"{rank0['memory_planned_mb']:.0f}), attention {rank0['attention']}"}


def two_rank_conformance(run: CheckRun) -> dict:
    """The fixture's DiT calls on 2 torchrun ranks (NCCL on GPUs, gloo on CPU), Ulysses 2 + FSDP2."""
    if run.ranks < 2:
        raise StageSkipped(f"{run.ranks} device(s): needs 2")
    out = run.out_dir / "gpu_check_ranks.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "bench.gpu_rank_check", str(run.fixture), str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not out.is_file():
        raise StageFailed(f"torchrun exited {done.returncode}: {done.stderr[-600:]}")
    figures = json.loads(out.read_text())
    figures["summary"] = (f"{figures['backend']}: {figures['calls']} calls, flow max abs err "
                          f"{figures['flow_abs_max']:.1e}, KV max abs err {figures['kv_abs_max']:.1e}")
    if not figures["ok"]:
        raise StageFailed(f"out of the float32 tolerances: {figures['summary']}")
    return figures

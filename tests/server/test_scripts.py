"""start.sh and stop.sh on free ports: the server comes up ready and leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.server.serverkit import REPO, http_get


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_start_then_stop_leaves_no_process(tmp_path):
    """start.sh waits for /ready and prints the URLs; stop.sh ends the server and its engine."""
    env = dict(os.environ, RUN_DIR=str(tmp_path), HTTP_PORT="0", WS_PORT="0", WS_HOST="127.0.0.1",
               HTTP_HOST="127.0.0.1", READY_TIMEOUT="60")
    out = subprocess.run(["./start.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ready: web page" in out.stdout
    server_pid = int((tmp_path / "server.pid").read_text())
    engine_pid = int((tmp_path / "engine.pid").read_text())
    ports = json.loads((tmp_path / "ports.json").read_text())
    assert http_get(f"http://127.0.0.1:{ports['http']}/ready")[0] == 200
    assert _alive(server_pid) and _alive(engine_pid)

    again = subprocess.run(["./start.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "already running" in again.stderr

    t0 = time.monotonic()
    out = subprocess.run(["./stop.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert time.monotonic() - t0 < 12
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (_alive(server_pid) or _alive(engine_pid)):
        time.sleep(0.1)
    assert not _alive(server_pid) and not _alive(engine_pid)
    assert not (tmp_path / "server.pid").exists() and not (tmp_path / "ports.json").exists()
    assert "nothing to stop" in subprocess.run(["./stop.sh"], cwd=REPO, env=env, capture_output=True,
                                               text=True, timeout=30).stdout


def test_graceful_close_code_on_stop(tmp_path):
    """SIGTERM closes client connections with 1001 (going away)."""
    from websockets.exceptions import ConnectionClosed

    from tests.server.serverkit import ServerProcess, open_ws

    srv = ServerProcess(tmp_path, {}).start()
    ws = open_ws(srv.ws_url)
    ws.send(json.dumps({"type": "ping", "t": 1}))
    ws.recv(timeout=5)
    srv.proc.send_signal(15)
    try:
        while True:
            ws.recv(timeout=10)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == 1001
    assert srv.proc.wait(timeout=15) == 0

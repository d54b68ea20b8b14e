"""Server test kit: a real `ws_server.py` process on loopback ports, a sync WS client, fixtures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0


def http_get(url: str, headers: dict | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """GET -> (status, headers, body), never raising for HTTP error statuses."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class ServerProcess:
    """`python ws_server.py` on free loopback ports with its own run directory."""

    def __init__(self, run_dir: Path, env: dict[str, str] | None = None):
        self.run_dir = run_dir
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.http_port = self.ws_port = 0

    def start(self, wait_ready: bool = True, http_port: int = 0, ws_port: int = 0) -> "ServerProcess":
        """Start (or restart, e.g. on the same ports) and wait for /ready; ports 0 = free ports."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "ports.json").unlink(missing_ok=True)
        env = dict(os.environ, HTTP_PORT=str(http_port), WS_PORT=str(ws_port), WS_HOST="127.0.0.1",
                   HTTP_HOST="127.0.0.1", RUN_DIR=str(self.run_dir), **self.env)
        with open(self.run_dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "ws_server.py"], cwd=REPO, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                ports = json.loads((self.run_dir / "ports.json").read_text())
                self.http_port, self.ws_port = ports["http"], ports["ws"]
            except (FileNotFoundError, ValueError, KeyError):
                time.sleep(0.05)
                continue
            if not wait_ready or self.get("/ready")[0] == 200:
                return self
            time.sleep(0.1)
        self.stop()  # never leave a server that did not come up running (it would restart its engine for ever)
        raise RuntimeError(f"server not ready in {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    @property
    def base_url(self) -> str:
        return self.url("/")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    def get(self, path: str, headers: dict | None = None):
        return http_get(self.url(path), headers)

    def json(self, path: str, headers: dict | None = None) -> dict:
        status, _, body = self.get(path, headers)
        assert status == 200, (path, status, body[:200])
        return json.loads(body)

    def engine_pid(self) -> int:
        return int((self.run_dir / "engine.pid").read_text())

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/ready")[0] == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"not ready again within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.run_dir / "server.log").read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"


@pytest.fixture
def server_factory(tmp_path):
    """Start servers with extra environment; all are stopped at the end of the test."""
    started: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        srv = ServerProcess(tmp_path / f"run{len(started)}", {k: str(v) for k, v in env.items()})
        started.append(srv)  # before start: a server that fails to come up is stopped too
        return srv.start()

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One sim server shared by a test module."""
    srv = ServerProcess(tmp_path_factory.mktemp("run"), {}).start()
    yield srv
    srv.stop()


@dataclass
class Received:
    """What a client got: frames with arrival times, and JSON messages."""

    frames: list[tuple[float, bytes]] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind]


def receive(ws, seconds: float = 1.0, *, frames: int | None = None, until_type: str | tuple[str, ...] | None = None,
            into: Received | None = None) -> Received:
    """Read for `seconds`, or until `frames` frames / a message of `until_type` (one type or a tuple) arrived."""
    until = (until_type,) if isinstance(until_type, str) else until_type
    got = into or Received()
    deadline = time.monotonic() + seconds
    start_frames = len(got.frames)
    while time.monotonic() < deadline:
        try:
            msg = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
        if isinstance(msg, bytes):
            got.frames.append((time.monotonic(), msg))
            if frames is not None and len(got.frames) - start_frames >= frames:
                break
        else:
            obj = json.loads(msg)
            got.messages.append(obj)
            if until is not None and obj.get("type") in until:
                break
    return got


def open_ws(url: str, **kwargs):
    """A connected sync client that the caller closes (or uses in a `with` block)."""
    return connect(url, **kwargs).__enter__()


def start_session(srv: ServerProcess, **init) -> tuple[object, dict]:
    """Connect, send init, return (ws, session reply)."""
    ws = open_ws(srv.ws_url, max_size=None, open_timeout=10)
    ws.send(json.dumps({"type": "init", "prompt": "green hills", "seed": 7, **init}))
    got = receive(ws, 20.0, until_type="session")
    replies = got.of_type("session")
    assert replies, f"no session reply; got {got.messages}"
    return ws, replies[0]

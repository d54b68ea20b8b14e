"""Fixtures for browser tests: the real server on loopback and headless Debian Chromium."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from browser_helpers import AUTH_TOKEN_FOR_TESTS

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts" / "browser"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


class ServerProcess:
    """One `python ws_server.py` child with its ports read from the run directory."""

    def __init__(self, run_dir: Path, extra_env: dict[str, str] | None = None):
        self.run_dir = run_dir
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.http_port = 0
        self.ws_port = 0
        self.log_path = run_dir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    def start(self, http_port: int = 0, ws_port: int = 0) -> "ServerProcess":
        ports_file = self.run_dir / "ports.json"
        ports_file.unlink(missing_ok=True)
        env = dict(os.environ, HTTP_PORT=str(http_port), WS_PORT=str(ws_port),
                   WS_HOST="127.0.0.1", HTTP_HOST="127.0.0.1", RUN_DIR=str(self.run_dir), **self.extra_env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "ws_server.py"], cwd=REPO, env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if ports_file.exists():
                try:
                    ports = json.loads(ports_file.read_text())
                    self.http_port, self.ws_port = int(ports["http"]), int(ports["ws"])
                except (ValueError, KeyError):
                    pass  # half-written; read again
                else:
                    if _get(f"{self.base_url}ready") == 200:
                        return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready within {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _start_server(run_dir: Path, extra_env: dict[str, str] | None = None):
    server = ServerProcess(run_dir, extra_env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A server shared by the tests that do not stop or reconfigure it."""
    yield from _start_server(tmp_path_factory.mktemp("run"))


@pytest.fixture
def own_server(tmp_path):
    """A server this test may stop and restart."""
    yield from _start_server(tmp_path)


@pytest.fixture
def auth_server(tmp_path):
    """A server that requires the access token `AUTH_TOKEN_FOR_TESTS`."""
    yield from _start_server(tmp_path, {"AUTH_TOKEN": AUTH_TOKEN_FOR_TESTS})


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, one per module: Playwright's sync API holds an event loop while it runs,
    so it is closed before other test areas (which use asyncio.run) start."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing; the browser tests drive Debian's Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.js_errors = errors
    yield page
    context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

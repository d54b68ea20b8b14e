"""Runs the upsampler child: launch, health polling, restart with backoff, group shutdown.

The child is exec'd fresh with asyncio's subprocess support in a new session,
so it leads its own process group: vLLM's API server and the engine-core
processes it spawns are stopped together with one signal to the group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from inference.upsampler.breaker import CircuitBreaker
from inference.upsampler.config import UpsamplerConfig
from inference.upsampler.launch import child_argv, child_environment, pick_port

log = logging.getLogger(__name__)

ORPHAN_GUARD = Path(__file__).with_name("orphan_guard.py")
LOG_NAME = "upsampler.log"
PID_NAME = "upsampler.pid"
LOG_ROTATE_BYTES = 32 * 1024 * 1024  # the log moves to upsampler.log.1 beyond this at a launch
STARTUP_POLL_S = 0.25  # probe interval while the child loads its model


class UpsamplerService:
    """Owns the child process; `state` is starting | ready | restarting | stopped."""

    def __init__(self, config: UpsamplerConfig, breaker: CircuitBreaker):
        self.config = config
        self.breaker = breaker
        self.log_dir = config.log_dir or Path(tempfile.gettempdir()) / f"upsampler-{os.getpid()}"
        self.state = "stopped"
        self.pid: int | None = None
        self.port: int | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.argv: list[str] = []
        self._ready_since: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / LOG_NAME

    @property
    def base_url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        """Starts supervising in a background task and returns at once."""
        if self._task is not None:
            raise RuntimeError("UpsamplerService.start() called twice; expected start, then stop")
        self._http = http
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.state = "starting"
        self._task = asyncio.create_task(self._supervise(), name="upsampler-supervisor")
        self._task.add_done_callback(self._supervisor_ended)

    async def stop(self) -> None:
        """Stops supervising and terminates the child's whole process group."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._terminate()
        self.state = "stopped"

    def _supervisor_ended(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug in supervision must show in /status, never take the front down.
        log.error("upsampler supervisor crashed", exc_info=task.exception())
        self.state = "failed"
        self.last_error = f"supervisor crashed: {task.exception()!r}"

    def snapshot(self) -> dict:
        uptime = None if self._ready_since is None else round(time.monotonic() - self._ready_since, 1)
        return {"state": self.state, "pid": self.pid, "port": self.port, "restarts": self.restarts,
                "last_error": self.last_error, "ready_for_s": uptime, "log": str(self.log_path),
                "command": self.argv}

    async def _supervise(self) -> None:
        backoff = self.config.restart_backoff_s
        while True:
            was_ready = False
            try:
                error = await self._launch()
                if error is None:
                    error = await self._wait_healthy()
                if error is None:
                    was_ready = True
                    self._mark_ready()
                    error = await self._watch()
            except (OSError, aiohttp.ClientError, ValueError) as exc:
                error = f"supervision failed: {exc!r}"
            self.last_error = error
            self._ready_since = None
            if not was_ready:
                self.breaker.record_failure()
            await self._terminate()
            backoff = self.config.restart_backoff_s if was_ready else backoff
            log.warning("upsampler child ended (%s); restarting in %.1f s", error, backoff)
            self.state = "restarting"
            self.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.restart_backoff_max_s)

    async def _launch(self) -> str | None:
        """Spawns the child; returns an error text when it cannot be run."""
        self.port = pick_port(self.config)
        self.argv = child_argv(self.config, self.port)
        argv = self.argv
        if sys.platform == "linux":
            argv = [sys.executable, str(ORPHAN_GUARD), str(os.getpid()), "--", *argv]
        env = child_environment(os.environ, self.config)
        self._rotate_log()
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} launch: {self.argv}\n".encode())
            log_file.flush()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
                )
            except OSError as exc:
                return f"cannot run {argv[0]!r}: {exc}"
        self.pid = self._proc.pid
        (self.log_dir / PID_NAME).write_text(f"{self.pid}\n")
        log.info("upsampler child pid %d on port %d: %s", self.pid, self.port, " ".join(self.argv))
        return None

    async def _wait_healthy(self) -> str | None:
        """Polls until the child serves our model; returns an error text on exit or timeout."""
        assert self._proc is not None
        exited = asyncio.ensure_future(self._proc.wait())
        deadline = time.monotonic() + self.config.startup_timeout_s
        try:
            while True:
                if exited.done():
                    return f"exited with code {exited.result()} during start-up; {self._log_tail()}"
                if await self._probe("/health") is None:
                    return await self._check_models()
                if time.monotonic() > deadline:
                    return (f"not healthy within startup_timeout_s={self.config.startup_timeout_s:g}; "
                            f"{self._log_tail()}")
                await asyncio.wait([exited], timeout=min(STARTUP_POLL_S, self.config.health_interval_s))
        finally:
            exited.cancel()

    async def _check_models(self) -> str | None:
        assert self._http is not None
        timeout = aiohttp.ClientTimeout(total=self.config.health_timeout_s)
        try:
            async with self._http.get(f"{self.base_url}/v1/models", timeout=timeout) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return f"GET /v1/models failed: {exc!r}"
        served = [entry.get("id") for entry in body.get("data", []) if isinstance(entry, dict)]
        if self.config.served_model_name not in served:
            return f"child serves models {served!r}; expected {self.config.served_model_name!r}"
        return None

    async def _watch(self) -> str:
        """Waits while the child stays healthy; returns why it no longer is."""
        assert self._proc is not None
        exited = asyncio.ensure_future(self._proc.wait())
        failures = 0
        try:
            while True:
                await asyncio.wait([exited], timeout=self.config.health_interval_s)
                if exited.done():
                    return f"exited with code {exited.result()}; {self._log_tail()}"
                problem = await self._probe("/health")
                failures = 0 if problem is None else failures + 1
                if failures >= self.config.health_failures_to_restart:
                    return f"stopped answering: {failures} health probes failed, last: {problem}"
        finally:
            exited.cancel()

    async def _probe(self, path: str) -> str | None:
        """None when GET `path` answers 200, else what went wrong."""
        assert self._http is not None
        timeout = aiohttp.ClientTimeout(total=self.config.health_timeout_s)
        try:
            async with self._http.get(f"{self.base_url}{path}", timeout=timeout) as response:
                return None if response.status == 200 else f"GET {path} answered {response.status}"
        except asyncio.TimeoutError:
            return f"GET {path} timed out after {self.config.health_timeout_s:g} s"
        except aiohttp.ClientError as exc:
            return f"GET {path} failed: {exc!r}"

    def _mark_ready(self) -> None:
        self.state = "ready"
        self._ready_since = time.monotonic()
        self.breaker.record_success()
        log.info("upsampler ready at %s (pid %s)", self.base_url, self.pid)

    async def _terminate(self) -> None:
        """SIGTERM to the child's group, SIGKILL after the grace period, then reap."""
        proc = self._proc  # cleared only when done, so a cancelled call can be finished by stop()
        if proc is None:
            return
        group = proc.pid  # leader of its own session, so its pid is the group id
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_grace_s
        while _group_alive(group) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if _group_alive(group):
            log.warning("upsampler group %d ignored SIGTERM for %.1f s; killing it", group,
                        self.config.stop_grace_s)
            _signal_group(group, signal.SIGKILL)
        await proc.wait()
        self._proc = None
        self.pid = None
        (self.log_dir / PID_NAME).unlink(missing_ok=True)

    def _rotate_log(self) -> None:
        """Keeps the log bounded across a long crash loop: one previous file, then it is dropped."""
        try:
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_suffix(".log.1"))
        except FileNotFoundError:
            pass

    def _log_tail(self) -> str:
        """The child's last log line, for error messages."""
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(max(0, self.log_path.stat().st_size - 4096))
                lines = [line.strip() for line in log_file.read().decode(errors="replace").splitlines()]
        except OSError as exc:
            return f"log unreadable: {exc}"
        lines = [line for line in lines if line and not line.startswith("=== ")]
        return f"last log line: {lines[-1][:300]!r}" if lines else f"log {self.log_path} is empty"


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def _group_alive(group: int) -> bool:
    """Whether any non-zombie process is still in `group` (zombies hold no GPU memory)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
            return True
        except ProcessLookupError:
            return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # state ppid pgrp ...
        if len(fields) > 2 and fields[2] == str(group) and fields[0] != "Z":
            return True
    return False

"""Start, watch and restart the engine process; carry typed messages to and from it.

Engine death is a message, never a hang: a process exit, a fatal EngineError,
a missed heartbeat, a start-up that takes too long or a chunk that takes too
long all end the generation, tell the front (`on_down`), and schedule a
restart with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Awaitable, Callable

import msgspec
import zmq
import zmq.asyncio

from inference import protocol as P
from server.settings import Settings

log = logging.getLogger("front.engine")
REPO_ROOT = Path(__file__).resolve().parent.parent


class EngineUnavailable(RuntimeError):
    """The engine is not ready to take this message."""


class EngineSupervisor:
    """Owns one engine generation at a time and restarts it when it fails."""

    def __init__(self, settings: Settings, *,
                 on_message: Callable[[object, list[bytes]], None],
                 on_down: Callable[[str], None],
                 on_ready: Callable[[P.EngineReady], Awaitable[None] | None] | None = None):
        self.settings = settings
        self.on_message = on_message
        self.on_down = on_down
        self.on_ready = on_ready
        self.state = "stopped"  # starting | ready | restarting | stopped
        self.reason = "engine not started"
        self.info: P.EngineReady | None = None
        self.heartbeat: P.Heartbeat | None = None
        self.restarts = 0
        self.generation = 0
        self.last_error: str | None = None
        self.pid: int | None = None
        self._ctx = zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task] = []
        self._supervisor: asyncio.Task | None = None
        self._stopping = False
        self._started_at = 0.0
        self._last_beat = 0.0
        self._ready_at = 0.0

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def heartbeat_age_s(self) -> float | None:
        """Seconds since the engine last said anything (None when no engine runs)."""
        return round(time.time() - self._last_beat, 2) if self._proc is not None else None

    def not_ready_reason(self) -> str | None:
        """Why the engine cannot take a session now (None: it can): down, starting, or late heartbeats."""
        if not self.ready:
            return self.reason
        age = time.time() - self._last_beat
        if age > self.settings.heartbeat_late_s:
            return (f"engine heartbeat late: none for {age:.1f} s (HEARTBEAT_LATE_S="
                    f"{self.settings.heartbeat_late_s:g}); it is restarted after {self.settings.heartbeat_timeout_s:g} s")
        return None

    async def start(self) -> None:
        self._stopping = False
        self._supervisor = asyncio.create_task(self._supervise(), name="engine-supervisor")

    async def stop(self) -> None:
        """Ask the engine to exit, then make sure it did (SIGKILL after a grace period)."""
        self._stopping = True
        if self._sock is not None and self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(Exception):
                await self._sock.send(P.encode(P.Shutdown()))
        await self._end_generation(grace_s=5.0)
        if self._supervisor:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self.state = "stopped"
        self.reason = "server stopping"

    def send(self, msg: msgspec.Struct) -> None:
        """Queue a message for the engine without waiting; raises EngineUnavailable when down."""
        if self.state != "ready" or self._sock is None:
            raise EngineUnavailable(self.reason)
        try:
            self._sock.send(P.encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            raise EngineUnavailable("engine is not accepting messages (queue full)") from None

    # -- one generation ----------------------------------------------------

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            reason = await self._run_generation()
            if self._stopping:
                return
            self.last_error = reason
            was_ready_long = self._ready_at and time.time() - self._ready_at > 60.0
            backoff = 1.0 if was_ready_long else backoff
            self.restarts += 1
            self.state = "restarting"
            self.reason = f"engine failed ({reason}); restart {self.restarts} in {backoff:.0f} s"
            log.error(self.reason)
            self.on_down(reason)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.restart_backoff_max_s)

    async def _run_generation(self) -> str:
        """Start an engine and return why it ended."""
        self.generation += 1
        self.info = None
        self.heartbeat = None
        self._ready_at = 0.0
        self.state = "starting"
        self.reason = "engine starting"
        sock = self._ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.bind("tcp://127.0.0.1:*")
        endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._sock = sock
        cmd = self.settings.engine_command(endpoint)
        run_dir = self.settings.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / "engine.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", LOG_LEVEL=self.settings.log_level)
        with open(log_path, "ab") as log_file:
            log_file.write(f"\n=== engine generation {self.generation}: {' '.join(cmd)}\n".encode())
            log_file.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=log_file, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                cwd=str(REPO_ROOT), env=env, start_new_session=True)
        self.pid = self._proc.pid
        (run_dir / "engine.pid").write_text(f"{self.pid}\n")
        log.info("engine generation %d started (pid %d): %s", self.generation, self.pid, " ".join(cmd))
        self._started_at = self._last_beat = time.time()
        ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._tasks = [asyncio.create_task(self._receive(sock, ended)),
                       asyncio.create_task(self._watch_process(self._proc, ended)),
                       asyncio.create_task(self._watchdog(ended))]
        reason = await ended
        await self._end_generation(grace_s=2.0, polite=False)
        return reason

    async def _end_generation(self, grace_s: float, polite: bool = True) -> None:
        """Reap the engine: wait (polite) or SIGTERM at once, SIGKILL the group after the grace."""
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current:
                t.cancel()
        self._tasks = []
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if not polite:
                _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=grace_s)
            except asyncio.TimeoutError:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), timeout=grace_s)
                except asyncio.TimeoutError:
                    _signal_group(proc.pid, signal.SIGKILL)
                    await proc.wait()
        if proc is not None:  # torchrun children or stragglers of the group
            _signal_group(proc.pid, signal.SIGKILL)
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            (self.settings.run_dir / "engine.pid").unlink()
        if self.state == "ready":
            self.state = "restarting"

    async def _receive(self, sock: zmq.asyncio.Socket, ended: asyncio.Future) -> None:
        while True:
            parts = await sock.recv_multipart()
            self._last_beat = time.time()
            try:
                msg = P.decode_to_front(parts[0])
            except msgspec.DecodeError as exc:
                log.error("undecodable engine message: %s", exc)
                continue
            if isinstance(msg, P.Heartbeat):
                self.heartbeat = msg
            elif isinstance(msg, P.EngineReady):
                self.info = msg
                self.state = "ready"
                self.reason = "ready"
                self._ready_at = time.time()
                log.info("engine ready: %s (%s) on %s, world size %d", msg.engine, msg.model, msg.device, msg.world_size)
                if self.on_ready:
                    result = self.on_ready(msg)
                    if asyncio.iscoroutine(result):
                        await result
            elif isinstance(msg, P.EngineProgress):
                frac = f" {msg.fraction:.0%}" if msg.fraction is not None else ""
                self.reason = f"engine {msg.stage}{frac}: {msg.detail}".rstrip(": ")
                log.info(self.reason)
            elif isinstance(msg, P.EngineError) and msg.fatal:
                if not ended.done():
                    ended.set_result(f"{msg.code}: {msg.message}")
            else:
                self.on_message(msg, parts[1:])

    async def _watch_process(self, proc: asyncio.subprocess.Process, ended: asyncio.Future) -> None:
        code = await proc.wait()
        await asyncio.sleep(0.2)  # let a last fatal EngineError arrive first; it explains more
        if not ended.done():
            ended.set_result(f"engine process {proc.pid} exited with code {code}; see {self.settings.run_dir / 'engine.log'}")

    async def _watchdog(self, ended: asyncio.Future) -> None:
        s = self.settings
        while not ended.done():
            await asyncio.sleep(0.25)
            now = time.time()
            if now - self._last_beat > s.heartbeat_timeout_s:
                reason = f"no heartbeat for {now - self._last_beat:.1f} s"
            elif self.state == "starting" and now - self._started_at > s.engine_start_timeout_s:
                reason = f"not ready after {s.engine_start_timeout_s:.0f} s (ENGINE_START_TIMEOUT_S)"
            elif (self.heartbeat and self.heartbeat.busy_since
                  and now - self.heartbeat.busy_since > s.engine_step_timeout_s):
                reason = f"a chunk has run {now - self.heartbeat.busy_since:.0f} s (ENGINE_STEP_TIMEOUT_S)"
            else:
                continue
            if not ended.done():
                ended.set_result(reason)


def _signal_group(pid: int, sig: int) -> None:
    """Signal the engine's process group (it was started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)

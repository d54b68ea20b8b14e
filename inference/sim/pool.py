"""The sim engine's render worker processes: start, send jobs, collect replies, notice deaths.

Workers are spawned (never forked: the engine process runs I/O threads), get
one duplex pipe each and exit when it closes. Replies are collected by `pump`,
which any caller waiting for work (a chunk, a build, a test frame) runs; a
worker that died or failed a job raises SimWorkerError, which the engine treats
as fatal (the front restarts it).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import recv_handle, send_handle

from .jobs import BuildCancelled, FrameRendered, JobFailed, SceneBuilt, Stop, WarmedUp, WarmUp
from .render import RenderConfig
from .worker import serve

log = logging.getLogger("sim.pool")

STOP_TIMEOUT_S = 3.0  # a worker that has not exited this long after Stop is killed
START_TIMEOUT_S = 120.0  # a worker that has not answered WarmUp this long fails the engine start


class SimWorkerError(RuntimeError):
    """A render worker died or failed a job; the engine cannot go on without it."""


class RenderPool:
    """N render workers and the replies they sent that nobody has collected yet."""

    def __init__(self, workers: int, render: RenderConfig):
        if workers < 1:
            raise ValueError(f"a render pool needs at least 1 worker, got {workers}")
        self.size = workers
        self.render = render
        self.procs: list[mp.process.BaseProcess] = []
        self.conns: list[Connection] = []
        self.frames: dict[int, FrameRendered] = {}  # job_id -> reply, until collected
        self.built: dict[int, tuple[SceneBuilt, int, int]] = {}  # build_id -> (reply, memfd, worker)
        self.cancelled: set[int] = set()  # build ids whose cancellation the worker confirmed
        self.warmed: set[int] = set()  # workers that answered WarmUp
        self.load = [0] * workers  # frames sent to each worker and not yet answered

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        for i in range(self.size):
            parent, child = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=serve, args=(child, self.render), name=f"sim-render-{i}", daemon=True)
            proc.start()
            child.close()  # only the worker holds its end: the pipe closes when either side dies
            self.procs.append(proc)
            self.conns.append(parent)
        log.info("started %d sim render workers (pids %s)", self.size, [p.pid for p in self.procs])

    def warm_up(self, width: int, height: int) -> None:
        """Wait until every worker runs and has the level ray grid of width x height."""
        for i in range(self.size):
            self.send(i, WarmUp(width=width, height=height))
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.warmed) < self.size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimWorkerError(f"sim render workers {sorted(set(range(self.size)) - self.warmed)} did not "
                                     f"start within {START_TIMEOUT_S:.0f} s")
            self.pump(min(left, 1.0))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def least_loaded(self) -> int:
        return min(range(self.size), key=lambda i: self.load[i])

    def send(self, worker: int, msg, fd: int | None = None) -> None:
        """Send a job to one worker (and a memfd right after it, when given)."""
        try:
            self.conns[worker].send(msg)
            if fd is not None:
                send_handle(self.conns[worker], fd, self.procs[worker].pid)
        except OSError as exc:  # BrokenPipeError and friends: the worker is gone
            self._raise_dead(worker, exc)

    def pump(self, timeout: float | None = 0.0) -> None:
        """Collect every reply that arrives within `timeout` seconds (0: only those already here)."""
        ready = wait(self.conns + [p.sentinel for p in self.procs], timeout)
        for i, proc in enumerate(self.procs):
            if proc.sentinel in ready and not proc.is_alive():
                self._raise_dead(i)
        for i, conn in enumerate(self.conns):
            if conn not in ready:
                continue
            try:
                while conn.poll():
                    self._receive(i, conn)
            except (EOFError, OSError) as exc:
                self._raise_dead(i, exc)

    def _receive(self, worker: int, conn: Connection) -> None:
        msg = conn.recv()
        if isinstance(msg, FrameRendered):
            self.frames[msg.job_id] = msg
            self.load[worker] -= 1
        elif isinstance(msg, SceneBuilt):
            self.built[msg.build_id] = (msg, recv_handle(conn), worker)
        elif isinstance(msg, BuildCancelled):
            self.cancelled.add(msg.build_id)
        elif isinstance(msg, WarmedUp):
            self.warmed.add(worker)
        elif isinstance(msg, JobFailed):
            raise SimWorkerError(f"sim render worker {worker} (pid {self.procs[worker].pid}) failed job "
                                 f"{msg.job_id}: {msg.message}")
        else:
            raise SimWorkerError(f"unexpected reply from sim render worker {worker}: {msg!r}")

    def check(self) -> None:
        """Raise SimWorkerError if any worker has exited."""
        for i, proc in enumerate(self.procs):
            if not proc.is_alive():
                self._raise_dead(i)

    def _raise_dead(self, worker: int, cause: BaseException | None = None) -> None:
        proc = self.procs[worker]
        proc.join(0.5)
        raise SimWorkerError(f"sim render worker {worker} (pid {proc.pid}) exited with code "
                             f"{proc.exitcode}") from cause

    def stop(self) -> None:
        """Ask every worker to exit, then kill those that do not; frees every collected memfd."""
        for conn in self.conns:
            try:
                conn.send(Stop())
            except OSError:
                pass
        for proc in self.procs:
            proc.join(STOP_TIMEOUT_S)
            if proc.is_alive():
                log.warning("sim render worker pid %s did not stop; killing it", proc.pid)
                proc.kill()
                proc.join(STOP_TIMEOUT_S)
        for conn in self.conns:
            conn.close()
        for _, fd, _ in self.built.values():
            os.close(fd)
        self.built.clear()
        self.procs, self.conns = [], []

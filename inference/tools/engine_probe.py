"""A synchronous stand-in front that drives one engine process chunk after chunk (long-session tests and benches).

It speaks the real protocol over the real socket: binds the PAIR socket the
engine connects to, starts `python -m inference.engine`, waits for
EngineReady, opens a session and asks for one chunk at a time as soon as the
previous one arrived (no 16 fps pacing), recording each chunk's engine
timings, frames left and the engine process's resident memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import zmq

from inference import protocol as P

REPO_ROOT = Path(__file__).resolve().parents[2]
STEP_SPEED = 0.05  # forward motion per video frame (the reference's W step)


class EngineRefused(RuntimeError):
    """The engine answered a request with an EngineError."""

    def __init__(self, error: P.EngineError):
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


@dataclass(kw_only=True)
class ChunkRecord:
    """One chunk as the stand-in front saw it."""

    index: int
    frames: int
    """JPEG frames that arrived with the chunk."""
    total_ms: float
    """Engine time from step start to frames encoded."""
    model_ms: float
    frames_left: int | None
    rss_mb: float
    """Resident memory of the engine process and its workers right after the chunk arrived."""


def walk(frames: int, first_frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Poses (F, 4, 4) of a camera walking forward (W held) from video frame `first_frame`, and keys (F, 8)."""
    poses = np.broadcast_to(np.eye(4), (frames, 4, 4)).copy()
    poses[:, 2, 3] = STEP_SPEED * (first_frame + np.arange(frames))
    keys = np.zeros((frames, 8), np.float32)
    keys[:, 0] = 1.0
    return poses, keys


def resident_mb(pid: int) -> float:
    """VmRSS in MiB of a process and all its descendants (an engine's worker processes count), Linux /proc."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # a worker that just exited
            continue
    return total


class EngineProbe:
    """One engine process under a stand-in front; use as a context manager (the engine is shut down on exit)."""

    def __init__(self, engine_args: list[str], *, ready_timeout_s: float = 180.0, log_path: Path | None = None):
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 0)
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        command = [sys.executable, "-m", "inference.engine", "--endpoint", f"tcp://127.0.0.1:{port}",
                   "--front-pid", str(os.getpid()), *engine_args]
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self.ready: P.EngineReady = self._wait(P.EngineReady, ready_timeout_s)[0]

    def __enter__(self) -> "EngineProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wait(self, kind: type, timeout_s: float) -> tuple[msgspec.Struct, list[bytes]]:
        """The next message of `kind` with its payload parts; heartbeats and progress are skipped."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self._sock.poll(int(min(left, 1.0) * 1000)):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"engine exited with {self.proc.returncode} while waiting for {kind.__name__}")
                continue
            parts = self._sock.recv_multipart()
            msg = P.decode_to_front(parts[0])
            if isinstance(msg, kind):
                return msg, parts[1:]
            if isinstance(msg, P.EngineError):
                raise EngineRefused(msg)
        raise TimeoutError(f"no {kind.__name__} from the engine within {timeout_s} s")

    def open(self, session_id: str, *, size: str, seed: int = 1, prompt: str = "green hills") -> P.SessionOpened:
        width, height = (int(v) for v in size.split("*"))
        self._sock.send(P.encode(P.OpenSession(session_id=session_id, prompt=prompt, seed=seed, width=width,
                                               height=height)))
        return self._wait(P.SessionOpened, 120.0)[0]

    def step(self, session_id: str, chunk_index: int, first_frame: int, *, first_chunk: bool | None = None,
             timeout_s: float = 120.0) -> tuple[P.ChunkReady, list[bytes]]:
        """Ask for one chunk of a walking camera starting at video frame `first_frame`; its header and JPEGs.

        first_chunk (default: first_frame == 0) picks the engine's first-chunk frame count.
        """
        first_chunk = first_frame == 0 if first_chunk is None else first_chunk
        frames = self.ready.first_chunk_frames if first_chunk else self.ready.chunk_frames
        poses, keys = walk(frames, first_frame)
        now = time.time()
        self._sock.send(P.encode(P.StepChunk(session_id=session_id, chunk_index=chunk_index, poses=poses.tobytes(),
                                             keys=keys.tobytes(), num_frames=frames, deadline=now, requested_at=now)))
        return self._wait(P.ChunkReady, timeout_s)

    def stream(self, session_id: str, chunks: int, *, first_frame: int = 0, on_chunk=None) -> list[ChunkRecord]:
        """Step `chunks` chunks one after the other; `on_chunk(record)` sees each as it arrives.

        first_frame > 0 starts the walk that many video frames from the origin
        (an engine that renders from the poses, like sim, sees hours of walking).
        """
        records = []
        for index in range(chunks):
            ready, jpegs = self.step(session_id, index, first_frame, first_chunk=index == 0)
            first_frame += len(jpegs)
            record = ChunkRecord(index=index, frames=len(jpegs), total_ms=ready.timings.total_ms,
                                 model_ms=ready.timings.model_ms, frames_left=ready.frames_left,
                                 rss_mb=resident_mb(self.proc.pid))
            records.append(record)
            if on_chunk is not None:
                on_chunk(record)
        return records

    def close(self, grace_s: float = 10.0) -> None:
        """Ask the engine to shut down; kill it if it does not exit within grace_s."""
        if self.proc.poll() is None:
            self._sock.send(P.encode(P.Shutdown()))
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._sock.close()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

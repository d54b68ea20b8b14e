"""The chunk-oriented interface every world engine implements (sim, lingbot-fast).

An engine owns per-session world state. The engine process (rank 0) calls it
from one thread only: open a session, generate chunks for a batch of sessions
that share a signature, change a prompt, reset, close. Frames come back as
uint8 RGB arrays; JPEG encoding and transport are the caller's job.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FPS = 16
# LingBot's valid output sizes, written W*H (width first) everywhere in this repo.
LINGBOT_SIZES = (
    "832*480", "480*832", "1280*720", "720*1280", "1280*704", "704*1280", "704*1024", "1024*704",
)


class EngineUserError(ValueError):
    """A request the engine refuses because of what the user sent (bad image, size...)."""

    def __init__(self, code: str, message: str, session_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.session_id = session_id  # set when one session of a batch is at fault


@dataclass(kw_only=True)
class SessionSpec:
    """What a session starts from."""

    session_id: str
    prompt: str
    seed: int
    width: int
    height: int
    image: np.ndarray | None = None  # (H, W, 3) uint8 start image, any size


@dataclass(kw_only=True)
class ChunkWork:
    """One chunk to generate for one session."""

    session_id: str
    chunk_index: int
    poses: np.ndarray  # (F, 4, 4) float64 camera-to-world, OpenCV axes
    keys: np.ndarray  # (F, 8) float32 held fraction per frame, columns w,a,s,d,i,j,k,l


@dataclass(kw_only=True)
class ChunkOutput:
    """Frames of one generated chunk plus where the time went."""

    frames: np.ndarray  # (F, H, W, 3) uint8; may be empty when `jpegs` carries the frames
    model_ms: float = 0.0
    decode_ms: float = 0.0
    jpegs: list[bytes] | None = None
    """The frames already JPEG-encoded (an engine that encodes in its own workers); the loop then skips encoding."""
    frames_left: int | None = None
    """Video frames the session can still generate before its length limit; None when it has no limit."""


@dataclass(kw_only=True)
class EngineInfo:
    """Static facts about a loaded engine (sent to the front in EngineReady)."""

    name: str
    model: str
    device: str
    sizes: list[str]
    default_size: str
    first_chunk_frames: int
    chunk_frames: int
    fps: int = FPS
    world_size: int = 1
    max_latent_frames: int | None = None
    """Latent frames a session may reach before it must reset (None: sessions stream without end)."""
    extra: dict = field(default_factory=dict)


def parse_size(size: str, allowed: list[str] | tuple[str, ...]) -> tuple[int, int]:
    """'832*480' -> (832, 480); raises EngineUserError naming the allowed sizes."""
    if size not in allowed:
        raise EngineUserError("bad_field", f"size {size!r} is not one of {', '.join(allowed)}")
    w, h = size.split("*")
    return int(w), int(h)


class EngineTask(abc.ABC):
    """Engine work other than chunks (open a world, change a prompt, render a test frame), done in slices.

    The step loop interleaves tasks with chunks: it calls `step()` only when no
    chunk is due soon, and each call does a bounded amount of work (an engine
    that can slice its work keeps a slice to a few tens of ms; one that cannot
    does it all in one call). `step()` returns True when the task is finished;
    `result` then holds its value. It raises EngineUserError (or ValueError) when
    the request itself is bad. `cancel()` abandons a task that has not finished
    (its client left, its request timed out); it must leave the engine as if the
    task had never started.
    """

    result: Any = None

    @abc.abstractmethod
    def step(self) -> bool:
        """Do one bounded slice of the work; True when finished (then `result` is set)."""

    def cancel(self) -> None:
        """Abandon the task (default: nothing to undo)."""


class CallTask(EngineTask):
    """A task done in one slice: one plain engine call (for engines that cannot slice their work)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def step(self) -> bool:
        self.result = self.fn(*self.args)
        return True


class WorldEngine(abc.ABC):
    """A world model that turns per-frame camera poses into video frames, chunk by chunk."""

    @abc.abstractmethod
    def info(self) -> EngineInfo:
        """Describe the engine (sizes, chunk lengths, device)."""

    def warm_up(self) -> None:
        """Run whatever makes the first real chunk fast (compile, allocate); optional."""

    @abc.abstractmethod
    def open_session(self, spec: SessionSpec) -> str:
        """Create the session's state and return its batching signature.

        Sessions with equal signatures run the identical computational graph
        and may share one `generate` call. Raises EngineUserError on bad input.
        """

    @abc.abstractmethod
    def generate(self, works: list[ChunkWork]) -> list[ChunkOutput]:
        """Generate one chunk for each work item (all with one signature), in order."""

    @abc.abstractmethod
    def set_prompt(self, session_id: str, prompt: str) -> None:
        """Change the text condition; the world state (position, caches) is kept."""

    @abc.abstractmethod
    def reset(self, session_id: str) -> None:
        """Return the session to its start image and start pose."""

    @abc.abstractmethod
    def close_session(self, session_id: str) -> None:
        """Drop every resource held for the session (unknown ids are ignored)."""

    @abc.abstractmethod
    def render_test_frame(self, prompt: str, seed: int, width: int, height: int) -> np.ndarray:
        """One stand-alone (H, W, 3) uint8 frame for /test-frame."""

    # -- sliced work (the step loop uses these; defaults run the plain call in one slice) --

    def open_task(self, spec: SessionSpec) -> EngineTask:
        """Build a session's world; `result` is its batching signature (as `open_session` returns)."""
        return CallTask(self.open_session, spec)

    def prompt_task(self, session_id: str, prompt: str) -> EngineTask:
        """Change a session's prompt; `result` is None."""
        return CallTask(self.set_prompt, session_id, prompt)

    def test_frame_task(self, prompt: str, seed: int, width: int, height: int) -> EngineTask:
        """Render a test frame; `result` is an (H, W, 3) uint8 frame or its JPEG bytes."""
        return CallTask(self.render_test_frame, prompt, seed, width, height)

    def health(self) -> dict:
        """This rank's resource figures for /status (RankHealth fields: memory_used_mb, memory_planned_mb,
        memory_free_mb, attention); {} when the engine has none to report. Called from the I/O thread."""
        return {}

    def close(self) -> None:
        """Release the engine (process exit follows)."""

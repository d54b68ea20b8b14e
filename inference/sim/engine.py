"""SimEngine: the procedural world as a WorldEngine (numpy, numba and pillow; no torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from inference.engine.base import (
    LINGBOT_SIZES, ChunkOutput, ChunkWork, EngineInfo, EngineTask, EngineUserError, SessionSpec, WorldEngine,
    parse_size,
)

from .look import ImagePalette, Look, apply_palette, look_from_prompt, palette_from_image
from .pool import RenderPool
from .pooled import PooledWorlds
from .render import RenderConfig, warm_up_kernels
from .tasks import OpenWorld, PromptChange, TestFrame
from .worlds import LocalWorlds, SceneEntry, Worlds

TEST_FRAME_SIZES = (16, 2048)  # inclusive width/height range accepted by render_test_frame
WAIT_S = 0.01  # how long a plain (unsliced) call waits for the workers between task steps


def default_workers() -> int:
    """Render workers by default: one per CPU this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(kw_only=True, eq=False)
class _Session:
    """One session's world: its spec, start-image palette, painted scene and frame size."""

    spec: SessionSpec
    palette: ImagePalette | None  # colours of the start image, if one was given
    entry: SceneEntry
    width: int
    height: int
    prompt_serial: int = 0  # serial of the prompt task last applied (newest wins)


class SimEngine(WorldEngine):
    """Renders a procedural landscape from exactly the camera poses it is given.

    Same seed and poses give identical frames, rendered in this process or in a
    worker; the prompt only changes light, palette and weather (see look.py),
    never the land or the camera path. Until `warm_up` starts the render
    workers (when `workers` > 1; default one per CPU), everything runs in this
    process and `generate` returns RGB frames; with workers, frames come back
    JPEG-encoded (ChunkOutput.jpegs) at `jpeg_quality`.
    """

    def __init__(self, chunk_frames: int = 4, *, render: RenderConfig | None = None, workers: int | None = None,
                 jpeg_quality: int = 85):
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        if workers is not None and workers < 0:
            raise ValueError(f"sim workers must be >= 0 (0 or 1: render in-process), got {workers}")
        self.chunk_frames = chunk_frames
        self.render_config = render or RenderConfig()
        self.workers = default_workers() if workers is None else workers
        self.jpeg_quality = jpeg_quality
        self.worlds: Worlds = LocalWorlds(self.render_config)
        self._sessions: dict[str, _Session] = {}
        self._serial = 0

    def info(self) -> EngineInfo:
        pooled = isinstance(self.worlds, PooledWorlds)
        return EngineInfo(name="sim", model="procedural", device="cpu", sizes=list(LINGBOT_SIZES),
                          default_size="832*480", first_chunk_frames=self.chunk_frames,
                          chunk_frames=self.chunk_frames,
                          extra={"render_workers": self.worlds.pool.size if pooled else 0})

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the render workers (empty when rendering in-process)."""
        return self.worlds.pool.pids if isinstance(self.worlds, PooledWorlds) else []

    def warm_up(self) -> None:
        """Start the render workers (workers > 1), else compile the render loops and build the
        default size's level ray grid here; either way the first frame waits for neither."""
        if self.workers > 1 and isinstance(self.worlds, LocalWorlds):
            if self._sessions:
                raise RuntimeError("SimEngine.warm_up starts the render workers: call it before opening sessions")
            pool = RenderPool(self.workers, self.render_config)
            pool.start()
            try:
                pool.warm_up(832, 480)
            except BaseException:
                pool.stop()
                raise
            self.worlds.close()
            self.worlds = PooledWorlds(pool, self.render_config)
        elif isinstance(self.worlds, LocalWorlds):
            warm_up_kernels()
            self.worlds.camera(832, 480).grid(0.0)

    # -- helpers the tasks use --

    def look(self, prompt: str, palette: ImagePalette | None) -> Look:
        return apply_palette(look_from_prompt(prompt), palette)

    def session_size(self, spec: SessionSpec) -> tuple[int, int]:
        return parse_size(f"{spec.width}*{spec.height}", LINGBOT_SIZES)

    def palette(self, image: np.ndarray | None) -> ImagePalette | None:
        if image is None:
            return None
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 4:
            raise EngineUserError(
                "bad_field", f"start image must be (H>=4, W, 3) uint8, got {image.shape} {image.dtype}")
        return palette_from_image(image)

    def check_test_size(self, width, height) -> None:
        lo, hi = TEST_FRAME_SIZES
        for name, value in (("width", width), ("height", height)):
            if not (isinstance(value, (int, np.integer)) and lo <= value <= hi):
                raise EngineUserError("bad_field", f"{name} {value!r} is outside {lo}..{hi}")

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise KeyError(f"unknown sim session {session_id!r} (open_session first)")
        return session

    def install(self, spec: SessionSpec, palette: ImagePalette | None, entry: SceneEntry) -> str:
        """Open (or replace) a session on a painted scene; its batching signature."""
        w, h = self.session_size(spec)
        self.close_session(spec.session_id)
        self._sessions[spec.session_id] = _Session(spec=spec, palette=palette, entry=entry, width=w, height=h,
                                                   prompt_serial=self.next_serial())
        return f"sim:{w}x{h}:{self.chunk_frames}"

    def apply_prompt(self, session: _Session, serial: int, entry: SceneEntry) -> None:
        """Give the session its repainted scene, unless it closed or a newer prompt was applied."""
        if self._sessions.get(session.spec.session_id) is session and serial > session.prompt_serial:
            self.worlds.release(session.entry)
            session.entry, session.prompt_serial = entry, serial
        else:
            self.worlds.release(entry)

    # -- sliced work --

    def open_task(self, spec: SessionSpec) -> EngineTask:
        return OpenWorld(self, spec)

    def prompt_task(self, session_id: str, prompt: str) -> EngineTask:
        return PromptChange(self, session_id, prompt)

    def test_frame_task(self, prompt: str, seed: int, width: int, height: int) -> EngineTask:
        return TestFrame(self, prompt, seed, width, height)

    def _run(self, task: EngineTask):
        """Drive a task to its end on this thread (the plain calls)."""
        try:
            while not task.step():
                if isinstance(self.worlds, PooledWorlds):
                    self.worlds.collect(WAIT_S)
        except BaseException:
            task.cancel()
            raise
        return task.result

    # -- plain calls --

    def open_session(self, spec: SessionSpec) -> str:
        return self._run(self.open_task(spec))

    def set_prompt(self, session_id: str, prompt: str) -> None:
        self._run(self.prompt_task(session_id, prompt))

    def render_test_frame(self, prompt: str, seed: int, width: int, height: int) -> np.ndarray:
        """The start-pose view for `prompt` and `seed`; width and height may be 16..2048 each."""
        return self._run(TestFrame(self, prompt, seed, width, height, raw=True))

    def generate(self, works: list[ChunkWork]) -> list[ChunkOutput]:
        chunks = []
        for work in works:
            session = self.session(work.session_id)
            poses = np.asarray(work.poses, dtype=np.float64)
            if poses.ndim != 3 or poses.shape[1:] != (4, 4):
                raise ValueError(f"poses must be (F, 4, 4), got {poses.shape} for {work.session_id!r}")
            chunks.append((session.entry, session.width, session.height, poses))
        if isinstance(self.worlds, PooledWorlds):
            done = self.worlds.render(chunks, self.jpeg_quality)
            return [ChunkOutput(frames=np.empty((0, h, w, 3), np.uint8), jpegs=jpegs, model_ms=cpu_ms)
                    for (_, w, h, _), (jpegs, cpu_ms) in zip(chunks, done)]
        outputs = []
        for entry, w, h, poses in chunks:
            frames, ms = self.worlds.render(entry, self.worlds.camera(w, h), poses)
            outputs.append(ChunkOutput(frames=frames, model_ms=ms))
        return outputs

    def reset(self, session_id: str) -> None:
        """Nothing to rewind: frames depend only on the poses, the seed and the current prompt."""
        self.session(session_id)

    def close_session(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            self.worlds.release(session.entry)

    def close(self) -> None:
        self._sessions.clear()
        self.worlds.close()
        self.worlds = LocalWorlds(self.render_config)

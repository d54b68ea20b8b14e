"""The sim engine's sliced work (EngineTask): open a world, change a prompt, render a test frame.

Each `step()` does one bounded piece on the caller's thread: checking the
request, one slice of an in-process build, or collecting what the render
workers sent. A scene many tasks ask for is built once (see worlds.py).
`cancel()` gives the scene claim back, so a cancelled task leaves nothing
behind: no session, no prompt change, no cached scene it alone asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from inference.engine.base import EngineTask, SessionSpec

from .camera import session_camera
from .worlds import LocalWorlds, SceneTicket

if TYPE_CHECKING:
    from .engine import SimEngine


class OpenWorld(EngineTask):
    """Build (or find) a session's scene, then open the session; `result` is its signature.

    A session already open under the same id keeps streaming until this task
    finishes and replaces it.
    """

    def __init__(self, engine: "SimEngine", spec: SessionSpec):
        self.engine, self.spec = engine, spec
        self.ticket: SceneTicket | None = None
        self.palette = None
        self.size: tuple[int, int] | None = None
        self.grid_ready = False

    def step(self) -> bool:
        if self.ticket is None:  # first slice: check the request, claim the scene
            self.size = self.engine.session_size(self.spec)
            self.palette = self.engine.palette(self.spec.image)
            self.ticket = self.engine.worlds.scene(self.spec.seed, self.engine.look(self.spec.prompt, self.palette))
            return self._finish() if self.ticket.entry is not None else False
        if not self.ticket.poll():
            return False
        return self._finish()

    def _finish(self) -> bool:
        worlds = self.engine.worlds
        if isinstance(worlds, LocalWorlds) and not self.grid_ready:  # the size's level ray grid: one slice
            self.grid_ready = True
            camera = worlds.camera(*self.size)
            if not camera.has_grid(0.0):
                camera.grid(0.0)
                return False
        self.result = self.engine.install(self.spec, self.palette, self.ticket.take())
        return True

    def cancel(self) -> None:
        if self.ticket is not None:
            self.ticket.cancel()


class PromptChange(EngineTask):
    """Repaint a session's scene for a new prompt; the newest prompt task of a session wins."""

    def __init__(self, engine: "SimEngine", session_id: str, prompt: str):
        self.engine = engine
        self.session = engine.session(session_id)  # KeyError for unknown sessions, as set_prompt
        self.prompt = prompt
        self.serial = engine.next_serial()
        self.ticket: SceneTicket | None = None

    def step(self) -> bool:
        if self.ticket is None:
            look = self.engine.look(self.prompt, self.session.palette)
            self.ticket = self.engine.worlds.scene(self.session.spec.seed, look)
            if self.ticket.entry is None:
                return False
        elif not self.ticket.poll():
            return False
        self.engine.apply_prompt(self.session, self.serial, self.ticket.take())
        return True

    def cancel(self) -> None:
        if self.ticket is not None:
            self.ticket.cancel()


class TestFrame(EngineTask):
    """The start-pose view of (prompt, seed) at any size 16..2048.

    `result`: JPEG bytes when rendered by a worker, else (or with `raw`) an
    (H, W, 3) uint8 frame.
    """

    def __init__(self, engine: "SimEngine", prompt: str, seed: int, width: int, height: int, *, raw: bool = False):
        self.engine, self.prompt, self.seed, self.width, self.height = engine, prompt, seed, width, height
        self.raw = raw
        self.ticket: SceneTicket | None = None
        self.job: int | None = None

    def step(self) -> bool:
        engine = self.engine
        if self.ticket is None:
            engine.check_test_size(self.width, self.height)
            self.ticket = engine.worlds.scene(int(self.seed), engine.look(self.prompt, None))
            return False
        if self.job is None:
            if not self.ticket.poll():
                return False
            return self._render(self.ticket.take())
        reply = engine.worlds.take_frame(self.job)
        if reply is None:
            engine.worlds.collect(0.0)
            reply = engine.worlds.take_frame(self.job)
        if reply is None:
            return False
        self.job = None
        self.result = (np.frombuffer(reply.data, np.uint8).reshape(self.height, self.width, 3)
                       if self.raw else reply.data)
        return True

    def _render(self, entry) -> bool:
        worlds = self.engine.worlds
        try:
            if isinstance(worlds, LocalWorlds):
                camera = session_camera(int(self.width), int(self.height))  # any size: not cached
                self.result = worlds.render(entry, camera, np.eye(4)[None])[0][0]
                return True
            quality = None if self.raw else self.engine.jpeg_quality
            # The worker renders in pipe order, before any later DropScene: the pin can go now.
            self.job = worlds.submit(entry, int(self.width), int(self.height), np.eye(4), quality)
            return False
        finally:
            worlds.release(entry)

    def cancel(self) -> None:
        if self.job is not None:
            self.engine.worlds.drop_frame(self.job)
            self.job = None
        elif self.ticket is not None:
            self.ticket.cancel()

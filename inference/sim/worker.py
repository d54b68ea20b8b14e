"""A sim render worker process: paints scenes into shared memory and renders JPEG frames.

One job at a time, in pipe order, except that scene builds run in slices
between frames: a frame waits at most one build slice (tens of ms: see
worlds.paint_on_small_pages), and under a steady stream of frames a build
still gets a slice every BUILD_SHARE_S. The worker exits when its pipe
closes, so it never outlives the engine that started it, however the engine
ended.
"""

from __future__ import annotations

import os
import signal
import time
from collections import OrderedDict
from collections.abc import Generator
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle

from inference.engine.frames import encode_jpeg

from .camera import Camera, session_camera
from .jobs import (
    AttachScene, BuildCancelled, BuildScene, CancelBuild, DropScene, FrameRendered, JobFailed, RenderFrame,
    SceneBuilt, Stop, WarmedUp, WarmUp,
)
from .render import RenderConfig, render_view, warm_up_kernels
from .scene import Scene
from .shared import SceneLayout, attach, publish
from .terrain import Terrain
from .worlds import paint_on_small_pages

BUILD_SHARE_S = 0.1  # longest a pending build waits for a slice while frames keep coming
CAMERAS = 6  # frame sizes whose ray grids a worker keeps (sessions use a few; test frames any)
TERRAINS = 2  # seeds whose terrain a worker keeps, to repaint them for another prompt


def serve(conn: Connection, render: RenderConfig) -> None:
    """Process entry: handle jobs until Stop or until the engine's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the engine's to handle
    paint_on_small_pages()
    RenderWorker(conn, render).run()


class RenderWorker:
    """The state of one worker: mapped scenes, cameras, cached terrains, pending builds."""

    def __init__(self, conn: Connection, render: RenderConfig):
        self.conn = conn
        self.render = render
        self.scenes: dict[int, Scene] = {}
        self.cameras: OrderedDict[tuple[int, int], Camera] = OrderedDict()
        self.terrains: OrderedDict[int, Terrain] = OrderedDict()
        self.builds: OrderedDict[int, tuple[BuildScene, Generator]] = OrderedDict()  # FIFO
        self.last_slice = 0.0

    def run(self) -> None:
        while True:
            try:
                ready = self.conn.poll(0 if self.builds else None)
                msg = self.conn.recv() if ready else None
            except (EOFError, OSError):
                return  # the engine is gone
            if isinstance(msg, Stop):
                return
            if msg is not None:
                self.handle(msg)
            if self.builds and (msg is None or time.monotonic() - self.last_slice > BUILD_SHARE_S):
                self.advance_build()

    def handle(self, msg) -> None:
        if isinstance(msg, RenderFrame):
            self.conn.send(self.render_frame(msg))
        elif isinstance(msg, WarmUp):
            warm_up_kernels()
            self._camera(msg.width, msg.height).grid(0.0)
            self.conn.send(WarmedUp(pid=os.getpid()))
        elif isinstance(msg, BuildScene):
            self.builds[msg.build_id] = (msg, self._build(msg))
        elif isinstance(msg, CancelBuild):
            entry = self.builds.pop(msg.build_id, None)
            if entry is not None:
                entry[1].close()
            self.conn.send(BuildCancelled(build_id=msg.build_id))
        elif isinstance(msg, AttachScene):
            fd = recv_handle(self.conn)
            try:
                self.scenes[msg.scene_id] = attach(fd, msg.layout)
            finally:
                os.close(fd)
        elif isinstance(msg, DropScene):
            self.scenes.pop(msg.scene_id, None)
        else:
            raise TypeError(f"unexpected message for a sim render worker: {msg!r}")

    def render_frame(self, job: RenderFrame) -> FrameRendered | JobFailed:
        start = time.thread_time()
        try:
            scene = self.scenes[job.scene_id]
            rgb = render_view(scene, self._camera(job.width, job.height), job.pose, config=self.render).rgb
            data = rgb.tobytes() if job.quality is None else encode_jpeg(rgb, job.quality)
        except Exception as exc:  # reported to the engine, which fails loudly
            return JobFailed(job_id=job.job_id, message=f"{type(exc).__name__}: {exc}")
        return FrameRendered(job_id=job.job_id, data=data, cpu_ms=(time.thread_time() - start) * 1e3)

    def _camera(self, width: int, height: int) -> Camera:
        camera = self.cameras.get((width, height))
        if camera is None:
            camera = self.cameras[(width, height)] = session_camera(width, height)
            if len(self.cameras) > CAMERAS:
                self.cameras.popitem(last=False)
        self.cameras.move_to_end((width, height))
        return camera

    def advance_build(self) -> None:
        """One slice of the oldest pending build; publish the scene when it is done."""
        self.last_slice = time.monotonic()
        build_id, (job, work) = next(iter(self.builds.items()))
        try:
            next(work)
            return
        except StopIteration as done:
            fd, layout = done.value
        except Exception as exc:
            del self.builds[build_id]
            self.conn.send(JobFailed(job_id=build_id, message=f"{type(exc).__name__}: {exc}"))
            return
        del self.builds[build_id]
        try:
            self.scenes[job.scene_id] = attach(fd, layout)
            self.conn.send(SceneBuilt(build_id=build_id, layout=layout))
            send_handle(self.conn, fd, os.getppid())
        finally:
            os.close(fd)

    def _build(self, job: BuildScene) -> Generator[None, None, tuple[int, SceneLayout]]:
        terrain = self.terrains.get(job.seed)
        if terrain is None:
            terrain = yield from Terrain.in_slices(job.seed)
            self.terrains[job.seed] = terrain
            if len(self.terrains) > TERRAINS:
                self.terrains.popitem(last=False)
        self.terrains.move_to_end(job.seed)
        scene = yield from Scene.in_slices(terrain, job.look)
        yield
        return publish(scene)

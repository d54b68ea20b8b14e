"""Scenes painted and frames rendered by the render workers; this process only routes and collects.

A scene is painted by one worker (the one that already holds the seed's
terrain, else the least busy) and published in a memfd; any worker that renders
it maps it first (AttachScene, sent once per worker). Frames go to the worker
with the fewest frames outstanding, preferring one that is not building.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from .jobs import AttachScene, BuildScene, CancelBuild, DropScene, RenderFrame
from .pool import RenderPool
from .render import RenderConfig
from .worlds import Build, SceneEntry, Worlds

TERRAIN_HOMES = 32  # remembered seed -> worker pairs (a worker keeps only a few terrains anyway)


class PooledWorlds(Worlds):
    """The scene cache over a RenderPool."""

    def __init__(self, pool: RenderPool, render: RenderConfig):
        super().__init__(render)
        self.pool = pool
        self._ids = 0
        self.by_build: dict[int, tuple[Build, int]] = {}  # build_id -> (build, scene_id)
        self.abandoned: dict[int, int] = {}  # cancelled build_id -> scene_id, until the worker confirms
        self.dropped_frames: set[int] = set()  # job ids whose replies nobody will collect
        self.homes: OrderedDict[int, int] = OrderedDict()  # seed -> worker that built its terrain
        self.building = [0] * pool.size  # builds sent to each worker and not answered

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    # -- builds --

    def start_build(self, build: Build) -> None:
        worker = self.homes.get(build.seed)
        if worker is None:
            worker = min(range(self.pool.size), key=lambda i: (self.building[i], self.pool.load[i]))
        self.homes[build.seed] = worker
        self.homes.move_to_end(build.seed)
        if len(self.homes) > TERRAIN_HOMES:
            self.homes.popitem(last=False)
        build.build_id, build.worker = self._next_id(), worker
        scene_id = self._next_id()
        self.by_build[build.build_id] = (build, scene_id)
        self.building[worker] += 1
        self.pool.send(worker, BuildScene(build_id=build.build_id, scene_id=scene_id, seed=build.seed,
                                          look=build.look))

    def progress(self, build: Build) -> None:
        self.collect(0.0)

    def stop_build(self, build: Build) -> None:
        _, scene_id = self.by_build.pop(build.build_id)
        self.abandoned[build.build_id] = scene_id
        self.building[build.worker] -= 1
        self.pool.send(build.worker, CancelBuild(build_id=build.build_id))

    def collect(self, timeout: float | None) -> None:
        """Pump the pool and file what came back: painted scenes, abandoned replies."""
        self.pool.pump(timeout)
        for build_id in list(self.pool.built):
            reply, fd, worker = self.pool.built.pop(build_id)
            if build_id in self.abandoned:  # painted after all; the worker mapped it: undo that
                os.close(fd)
                self.pool.send(worker, DropScene(scene_id=self.abandoned.pop(build_id)))
                continue
            build, scene_id = self.by_build.pop(build_id)
            self.building[worker] -= 1
            entry = SceneEntry(key=build.key, scene_id=scene_id, fd=fd, layout=reply.layout, attached={worker})
            self.finish(build, entry)
        for build_id in self.pool.cancelled:  # after any SceneBuilt of the same build (pipe order)
            self.abandoned.pop(build_id, None)
        self.pool.cancelled.clear()
        for job_id in self.dropped_frames & self.pool.frames.keys():
            del self.pool.frames[job_id]
            self.dropped_frames.discard(job_id)

    def evict(self, entry: SceneEntry) -> None:
        os.close(entry.fd)
        entry.fd = -1
        for worker in entry.attached:
            self.pool.send(worker, DropScene(scene_id=entry.scene_id))
        entry.attached.clear()

    # -- frames --

    def submit(self, entry: SceneEntry, width: int, height: int, pose: np.ndarray, quality: int | None) -> int:
        """Send one frame to the least busy worker; its job id. quality None asks for raw RGB."""
        worker = min(range(self.pool.size), key=lambda i: (self.pool.load[i], self.building[i]))
        if worker not in entry.attached:
            self.pool.send(worker, AttachScene(scene_id=entry.scene_id, layout=entry.layout), fd=entry.fd)
            entry.attached.add(worker)
        job_id = self._next_id()
        self.pool.send(worker, RenderFrame(job_id=job_id, scene_id=entry.scene_id, width=width, height=height,
                                           pose=np.asarray(pose, np.float64), quality=quality))
        self.pool.load[worker] += 1
        return job_id

    def take_frame(self, job_id: int):
        """The reply for `job_id` if it has come (FrameRendered), else None."""
        return self.pool.frames.pop(job_id, None)

    def drop_frame(self, job_id: int) -> None:
        """Nobody wants this frame any more: discard it whenever it comes."""
        if self.pool.frames.pop(job_id, None) is None:
            self.dropped_frames.add(job_id)

    def render(self, chunks: list[tuple[SceneEntry, int, int, np.ndarray]],
               quality: int | None) -> list[tuple[list[bytes], float]]:
        """Every frame of every (entry, width, height, poses) at once, spread over the workers;
        per chunk (frames as JPEG or raw RGB bytes, worker CPU milliseconds)."""
        jobs = [[self.submit(entry, w, h, pose, quality) for pose in poses] for entry, w, h, poses in chunks]
        waiting = {job for chunk in jobs for job in chunk}
        while not waiting <= self.pool.frames.keys():
            self.collect(None)
        out = []
        for chunk in jobs:
            replies = [self.pool.frames.pop(job) for job in chunk]
            out.append(([r.data for r in replies], sum(r.cpu_ms for r in replies)))
        return out

    def close(self) -> None:
        """Stop the workers (their mappings go with them) and close every memfd this process holds."""
        for entry in self.entries.values():
            if entry.fd >= 0:
                os.close(entry.fd)
        self.entries.clear()
        self.builds.clear()
        self.by_build.clear()
        self.pool.stop()

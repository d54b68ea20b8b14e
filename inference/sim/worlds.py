"""Where the sim engine's painted scenes live and are rendered: in this process, or in render workers.

Both kinds keep an LRU of painted scenes keyed by (seed, look), shared by
every session and test frame that asks for the same; a scene in use is never
evicted. A scene not yet painted is built once however many tasks wait for it:
`LocalWorlds` builds in slices on the caller's thread (each `poll` one slice),
`PooledWorlds` has a worker build it and only collects replies. Frames are
rendered in-process (RGB arrays) or by the workers (JPEG, or raw RGB on request).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import time
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from .camera import Camera, session_camera
from .look import Look
from .render import RenderConfig, render_view
from .scene import Scene
from .terrain import Terrain


def numpy_huge_page_switch():
    """numpy's switch for asking the kernel for transparent huge pages (set(bool) -> previous), or None."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2.x, 1.x
        try:
            return getattr(importlib.import_module(module), "_set_madvise_hugepage")
        except (ImportError, AttributeError):
            continue
    return None


def paint_on_small_pages() -> None:
    """Stop numpy from asking for transparent huge pages in this process (its default for arrays >= 4 MB).

    A build allocates fresh 4-16 MB arrays in every slice. On a VM whose host
    backs guest memory lazily, each 2 MB huge page took ~0.3 ms to fault in,
    and slices meant to take tens of ms took 150-370 ms (a frame queued
    behind one waited as long); on small pages the same slices take 20-55 ms.
    """
    switch = numpy_huge_page_switch()
    if switch is not None:
        switch(False)


SCENE_CACHE = 8  # painted (seed, look) scenes kept while no session uses them
TERRAIN_CACHE = 4  # seeds whose terrain stays built in this process (LocalWorlds)


def scene_key(seed: int, look: Look) -> tuple:
    return (int(seed), dataclasses.astuple(look))


@dataclass(kw_only=True, eq=False)
class SceneEntry:
    """A painted scene; `users` counts the sessions and tasks holding it."""

    key: tuple
    scene: Scene | None = None  # LocalWorlds
    scene_id: int = 0  # PooledWorlds: the workers' name for it
    fd: int = -1  # PooledWorlds: its memfd
    layout: object = None  # PooledWorlds: shared.SceneLayout
    attached: set[int] = field(default_factory=set)  # PooledWorlds: workers that mapped it
    users: int = 0


@dataclass(kw_only=True, eq=False)
class Build:
    """A scene being painted for `waiters` tasks."""

    key: tuple
    seed: int
    look: Look
    waiters: int = 0
    entry: SceneEntry | None = None  # set when painted
    work: Generator | None = None  # LocalWorlds: the slices still to run
    build_id: int = 0  # PooledWorlds
    worker: int = -1  # PooledWorlds


class SceneTicket:
    """One task's claim on a scene: `poll()` until True, then `take()` it (pinned), or `cancel()`."""

    def __init__(self, worlds: "Worlds", build: Build | None = None, entry: SceneEntry | None = None):
        self.worlds, self.build, self.entry = worlds, build, entry
        self.done = False

    def poll(self) -> bool:
        if self.entry is None:
            self.entry = self.worlds.advance(self.build)
        return self.entry is not None

    def take(self) -> SceneEntry:
        """The painted scene; the ticket's pin passes to the caller (release it with Worlds.release)."""
        if self.entry is None:
            raise RuntimeError("scene ticket taken before its build finished")
        self.done = True
        return self.entry

    def cancel(self) -> None:
        """Give up the claim; a build nobody else waits for stops, a scene it left unused is forgotten."""
        if self.done:
            return
        self.done = True
        if self.entry is not None:
            self.worlds.release(self.entry, forget=self.build is not None)
        else:
            self.worlds.abandon(self.build)


class Worlds(abc.ABC):
    """The scene cache and builds common to both kinds."""

    def __init__(self, render: RenderConfig):
        self.render_config = render
        self.entries: OrderedDict[tuple, SceneEntry] = OrderedDict()
        self.builds: dict[tuple, Build] = {}

    def scene(self, seed: int, look: Look) -> SceneTicket:
        """A ticket for the scene of (seed, look), painted already or once built."""
        key = scene_key(seed, look)
        entry = self.entries.get(key)
        if entry is not None:
            entry.users += 1
            self.entries.move_to_end(key)
            return SceneTicket(self, entry=entry)
        build = self.builds.get(key)
        if build is None:
            build = self.builds[key] = Build(key=key, seed=int(seed), look=look)
            self.start_build(build)
        build.waiters += 1
        return SceneTicket(self, build=build)

    def finish(self, build: Build, entry: SceneEntry) -> None:
        """A build is painted: cache it, pinned once for each waiting ticket."""
        self.builds.pop(build.key, None)
        entry.users += build.waiters
        build.entry = entry
        self.entries[build.key] = entry
        self.trim()

    def advance(self, build: Build) -> SceneEntry | None:
        """Progress `build` (LocalWorlds: one slice); its entry once painted."""
        if build.entry is None:
            self.progress(build)
        return build.entry

    def abandon(self, build: Build) -> None:
        build.waiters -= 1
        if build.waiters == 0 and build.entry is None:
            self.builds.pop(build.key, None)
            self.stop_build(build)

    def release(self, entry: SceneEntry, forget: bool = False) -> None:
        """Drop one pin; `forget` also evicts the scene if that left it unused."""
        entry.users -= 1
        if forget and entry.users == 0 and self.entries.get(entry.key) is entry:
            del self.entries[entry.key]
            self.evict(entry)
        self.trim()

    def trim(self) -> None:
        unused = [key for key, e in self.entries.items() if e.users == 0]  # oldest first
        for key in unused[: max(0, len(self.entries) - SCENE_CACHE)]:
            self.evict(self.entries.pop(key))

    @abc.abstractmethod
    def start_build(self, build: Build) -> None: ...

    @abc.abstractmethod
    def progress(self, build: Build) -> None: ...

    @abc.abstractmethod
    def stop_build(self, build: Build) -> None: ...

    @abc.abstractmethod
    def evict(self, entry: SceneEntry) -> None: ...

    def close(self) -> None:
        for build in list(self.builds.values()):
            self.stop_build(build)
        self.builds.clear()
        for entry in self.entries.values():
            self.evict(entry)
        self.entries.clear()


class LocalWorlds(Worlds):
    """Scenes painted and rendered in this process; builds advance one slice per poll."""

    def __init__(self, render: RenderConfig):
        super().__init__(render)
        paint_on_small_pages()
        self.terrains: OrderedDict[int, Terrain] = OrderedDict()
        self.cameras: dict[tuple[int, int], Camera] = {}  # session sizes (LINGBOT_SIZES: a few)

    def start_build(self, build: Build) -> None:
        build.work = self._paint(build)

    def _paint(self, build: Build) -> Generator[None, None, Scene]:
        terrain = self.terrains.get(build.seed)
        if terrain is None:
            terrain = yield from Terrain.in_slices(build.seed)
            self.terrains[build.seed] = terrain
            if len(self.terrains) > TERRAIN_CACHE:
                self.terrains.popitem(last=False)
        self.terrains.move_to_end(build.seed)
        return (yield from Scene.in_slices(terrain, build.look))

    def progress(self, build: Build) -> None:
        try:
            next(build.work)
        except StopIteration as done:
            self.finish(build, SceneEntry(key=build.key, scene=done.value))

    def stop_build(self, build: Build) -> None:
        build.work.close()

    def evict(self, entry: SceneEntry) -> None:
        entry.scene = None  # sessions holding it were counted in `users`: none is left

    def camera(self, width: int, height: int) -> Camera:
        camera = self.cameras.get((width, height))
        if camera is None:
            camera = self.cameras[(width, height)] = session_camera(width, height)
        return camera

    def render(self, entry: SceneEntry, camera: Camera, poses: np.ndarray) -> tuple[np.ndarray, float]:
        """(F, H, W, 3) uint8 frames of `poses` and the milliseconds they took."""
        start = time.perf_counter()
        frames = np.empty((len(poses), camera.height, camera.width, 3), np.uint8)
        for i, pose in enumerate(poses):
            frames[i] = render_view(entry.scene, camera, pose, config=self.render_config).rgb
        return frames, (time.perf_counter() - start) * 1e3

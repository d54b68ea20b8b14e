"""Messages between the sim engine and its render workers (pickled over one pipe per worker).

Engine -> worker: WarmUp, BuildScene, CancelBuild, AttachScene (a memfd
follows on the pipe), DropScene, RenderFrame, Stop. Worker -> engine: WarmedUp,
SceneBuilt (a memfd follows), BuildCancelled, FrameRendered, JobFailed. A worker handles its pipe
in order, so a build's SceneBuilt, if it finished first, precedes its BuildCancelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .look import Look
from .shared import SceneLayout


@dataclass(kw_only=True, frozen=True)
class WarmUp:
    """Compile the render loops and build the level ray grid of a frame size, then answer WarmedUp."""

    width: int
    height: int


@dataclass(kw_only=True, frozen=True)
class WarmedUp:
    """The worker has started, can render and has built the grid it was asked for."""

    pid: int


@dataclass(kw_only=True, frozen=True)
class BuildScene:
    """Paint the scene of (seed, look) in slices and publish it as scene `scene_id`."""

    build_id: int
    scene_id: int
    seed: int
    look: Look


@dataclass(kw_only=True, frozen=True)
class CancelBuild:
    """Abandon a build that has not finished (nothing is published for it); answered by BuildCancelled."""

    build_id: int


@dataclass(kw_only=True, frozen=True)
class AttachScene:
    """Map scene `scene_id` from the memfd sent right after this message."""

    scene_id: int
    layout: SceneLayout


@dataclass(kw_only=True, frozen=True)
class DropScene:
    """Unmap scene `scene_id` (the engine evicted it)."""

    scene_id: int


@dataclass(kw_only=True, frozen=True)
class RenderFrame:
    """Render one frame of an attached scene, JPEG-encoded (or raw RGB when quality is None)."""

    job_id: int
    scene_id: int
    width: int
    height: int
    pose: np.ndarray  # (4, 4) float64 camera-to-world
    quality: int | None  # JPEG quality; None: the (H, W, 3) uint8 pixels as bytes


@dataclass(kw_only=True, frozen=True)
class Stop:
    """Exit the worker loop."""


@dataclass(kw_only=True, frozen=True)
class SceneBuilt:
    """Build `build_id` is published; its memfd follows this message on the pipe."""

    build_id: int
    layout: SceneLayout


@dataclass(kw_only=True, frozen=True)
class BuildCancelled:
    """The worker holds nothing more of build `build_id`."""

    build_id: int


@dataclass(kw_only=True, frozen=True)
class FrameRendered:
    """Frame `job_id` (JPEG or raw RGB bytes, as asked) and the worker's CPU milliseconds for it."""

    job_id: int
    data: bytes
    cpu_ms: float


@dataclass(kw_only=True, frozen=True)
class JobFailed:
    """A job raised (a programming error: the engine validates every request first)."""

    job_id: int
    message: str

"""A painted scene in anonymous shared memory (a memfd), so every render worker maps one copy.

The worker that paints a scene copies the arrays the renderer reads (texels,
cloud cover, walkable height, close-up detail) into a memfd and hands the file
descriptor to the engine, which passes it on to the other workers over their
pipes (SCM_RIGHTS). A memfd has no name: the kernel frees it when the last
descriptor and mapping are gone, so nothing is left behind when a process dies.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np

from .look import Look
from .scene import Scene
from .terrain import Ground, TerrainConfig

ARRAYS = ("texels", "cloud", "smooth", "detail")  # float32 arrays in the memfd, in this order


@dataclass(kw_only=True, frozen=True)
class SceneLayout:
    """Where a shared scene's arrays lie in its memfd, plus its small fields."""

    look: Look
    config: TerrainConfig
    origin: tuple[float, float]
    levels: tuple[tuple[int, int, float], ...]  # (first texel, texels per side, metres per texel)
    shapes: tuple[tuple[int, ...], ...]  # one per name in ARRAYS
    offsets: tuple[int, ...]  # byte offset of each array
    nbytes: int


def _arrays(scene: Scene) -> list[np.ndarray]:
    return [scene.texels, scene.cloud, scene.ground.smooth, scene.ground.detail]


def publish(scene: Scene) -> tuple[int, SceneLayout]:
    """Copy a scene's render arrays into a new memfd; (descriptor, layout). The caller owns the fd.

    Raises OSError (ENOSPC/ENOMEM) up front when the memory cannot be had, instead
    of a SIGBUS on first touch.
    """
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in _arrays(scene)]
    offsets, nbytes = [], 0
    for a in arrays:
        offsets.append(nbytes)
        nbytes += -(-a.nbytes // 64) * 64  # keep each array cache-line aligned
    fd = os.memfd_create("sim-scene", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, nbytes)
        os.posix_fallocate(fd, 0, nbytes)
        with mmap.mmap(fd, nbytes) as mem:
            for a, off in zip(arrays, offsets):
                np.frombuffer(mem, np.float32, a.size, off)[:] = a.reshape(-1)
    except BaseException:
        os.close(fd)
        raise
    ground = scene.ground
    layout = SceneLayout(look=scene.look, config=ground.config, origin=tuple(ground.origin),
                         levels=tuple(tuple(lv) for lv in scene.levels),
                         shapes=tuple(a.shape for a in arrays), offsets=tuple(offsets), nbytes=nbytes)
    return fd, layout


def attach(fd: int, layout: SceneLayout) -> Scene:
    """Map a published scene read-only (the fd may be closed afterwards; the mapping stays)."""
    mem = mmap.mmap(fd, layout.nbytes, prot=mmap.PROT_READ)
    texels, cloud, smooth, detail = (
        np.frombuffer(mem, np.float32, int(np.prod(shape)), off).reshape(shape)
        for shape, off in zip(layout.shapes, layout.offsets))
    ground = Ground(config=layout.config, origin=layout.origin, smooth=smooth, detail=detail)
    return Scene.from_parts(look=layout.look, ground=ground, texels=texels, levels=list(layout.levels),
                            cloud=cloud)

"""SimEngine: the procedural world as a WorldEngine (numpy + pillow only, no torch)."""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from inference.engine.base import (
    LINGBOT_SIZES, ChunkOutput, ChunkWork, EngineInfo, EngineUserError, SessionSpec, WorldEngine,
    parse_size,
)

from .camera import Camera, session_camera
from .look import ImagePalette, Look, apply_palette, look_from_prompt, palette_from_image
from .render import RenderConfig, render_view
from .scene import Scene
from .terrain import Terrain

TEST_FRAME_SIZES = (16, 2048)  # inclusive width/height range accepted by render_test_frame
TERRAIN_CACHE = 4  # seeds whose terrain stays built after their sessions close
SCENE_CACHE = 8  # painted (seed, look) scenes kept for sessions and prompts that repeat


@dataclass(kw_only=True)
class _Session:
    """One session's world: its seed's terrain, its current look and its camera."""

    spec: SessionSpec
    palette: ImagePalette | None  # colours of the start image, if one was given
    scene: Scene
    camera: Camera


def _look(prompt: str, palette: ImagePalette | None) -> Look:
    return apply_palette(look_from_prompt(prompt), palette)


class SimEngine(WorldEngine):
    """Renders a procedural landscape from exactly the camera poses it is given.

    Same seed and poses give identical frames; the prompt only changes light,
    palette and weather (see look.py), never the land or the camera path.
    """

    def __init__(self, chunk_frames: int = 4, *, render: RenderConfig | None = None):
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.chunk_frames = chunk_frames
        self.render_config = render or RenderConfig()
        self._sessions: dict[str, _Session] = {}
        self._terrains: OrderedDict[int, Terrain] = OrderedDict()
        self._scenes: OrderedDict[tuple, Scene] = OrderedDict()  # (seed, look fields) -> scene
        self._cameras: dict[tuple[int, int], Camera] = {}

    def info(self) -> EngineInfo:
        return EngineInfo(name="sim", model="procedural", device="cpu", sizes=list(LINGBOT_SIZES),
                          default_size="832*480", first_chunk_frames=self.chunk_frames,
                          chunk_frames=self.chunk_frames)

    def warm_up(self) -> None:
        """Build the default size's level-view ray grid (seeds are unknown until a session opens)."""
        self._camera(832, 480).grid(0.0)

    def _terrain(self, seed: int) -> Terrain:
        terrain = self._terrains.get(seed)
        if terrain is None:
            terrain = Terrain(seed)
            self._terrains[seed] = terrain
        self._terrains.move_to_end(seed)
        in_use = {s.spec.seed for s in self._sessions.values()} | {seed}
        for old in list(self._terrains):
            if len(self._terrains) <= TERRAIN_CACHE:
                break
            if old not in in_use:
                del self._terrains[old]
        return terrain

    def _scene(self, seed: int, look: Look) -> Scene:
        """The painted scene for a seed and look, shared by sessions that ask for the same."""
        key = (seed, dataclasses.astuple(look))
        scene = self._scenes.get(key)
        if scene is None:
            scene = self._scenes[key] = Scene(self._terrain(seed), look)
            if len(self._scenes) > SCENE_CACHE:
                self._scenes.popitem(last=False)  # sessions still hold theirs
        self._scenes.move_to_end(key)
        return scene

    def _camera(self, width: int, height: int) -> Camera:
        camera = self._cameras.get((width, height))
        if camera is None:
            camera = self._cameras[(width, height)] = session_camera(width, height)
        return camera

    def open_session(self, spec: SessionSpec) -> str:
        w, h = parse_size(f"{spec.width}*{spec.height}", LINGBOT_SIZES)
        palette = None
        if spec.image is not None:
            image = np.asarray(spec.image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 4:
                raise EngineUserError(
                    "bad_field", f"start image must be (H>=4, W, 3) uint8, got {image.shape} {image.dtype}")
            palette = palette_from_image(image)
        scene = self._scene(spec.seed, _look(spec.prompt, palette))
        self._sessions[spec.session_id] = _Session(spec=spec, palette=palette, scene=scene,
                                                   camera=self._camera(w, h))
        return f"sim:{w}x{h}:{self.chunk_frames}"

    def _get(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise KeyError(f"unknown sim session {session_id!r} (open_session first)")
        return session

    def generate(self, works: list[ChunkWork]) -> list[ChunkOutput]:
        outputs = []
        for work in works:
            session = self._get(work.session_id)
            poses = np.asarray(work.poses, dtype=np.float64)
            if poses.ndim != 3 or poses.shape[1:] != (4, 4):
                raise ValueError(f"poses must be (F, 4, 4), got {poses.shape} for {work.session_id!r}")
            cam = session.camera
            start = time.perf_counter()
            frames = np.empty((poses.shape[0], cam.height, cam.width, 3), np.uint8)
            for i, pose in enumerate(poses):
                frames[i] = render_view(session.scene, cam, pose, config=self.render_config).rgb
            outputs.append(ChunkOutput(frames=frames, model_ms=(time.perf_counter() - start) * 1e3))
        return outputs

    def set_prompt(self, session_id: str, prompt: str) -> None:
        session = self._get(session_id)
        session.scene = self._scene(session.spec.seed, _look(prompt, session.palette))

    def reset(self, session_id: str) -> None:
        """Nothing to rewind: frames depend only on the poses, the seed and the current prompt."""
        self._get(session_id)

    def close_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def render_test_frame(self, prompt: str, seed: int, width: int, height: int) -> np.ndarray:
        """The start-pose view for `prompt` and `seed`; width and height may be 16..2048 each."""
        lo, hi = TEST_FRAME_SIZES
        for name, value in (("width", width), ("height", height)):
            if not (isinstance(value, (int, np.integer)) and lo <= value <= hi):
                raise EngineUserError("bad_field", f"{name} {value!r} is outside {lo}..{hi}")
        scene = self._scene(int(seed), look_from_prompt(prompt))
        return render_view(scene, session_camera(int(width), int(height)), np.eye(4),
                           config=self.render_config).rgb

    def close(self) -> None:
        self._sessions.clear()
        self._terrains.clear()
        self._scenes.clear()
        self._cameras.clear()

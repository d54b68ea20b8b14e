"""The procedural `sim` world engine: a landscape rendered on the CPU from camera poses."""

from .camera import Camera, decompose_pose, intrinsics
from .engine import SimEngine
from .look import Look, look_from_prompt
from .render import RenderConfig, View, render_frame, render_view
from .scene import Scene
from .terrain import Terrain

__all__ = [
    "Camera", "Look", "RenderConfig", "Scene", "SimEngine", "Terrain", "View",
    "decompose_pose", "intrinsics", "look_from_prompt", "render_frame", "render_view",
]

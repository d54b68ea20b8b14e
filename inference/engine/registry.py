"""Build an engine by name; heavy imports (torch) happen only for engines that need them."""

from __future__ import annotations

from inference.engine.base import WorldEngine


def make_engine(name: str, *, chunk_frames: int = 4, model_dir: str = "", options: dict | None = None) -> WorldEngine:
    """Instantiate `sim` or `lingbot-fast`; raises ValueError naming the known engines.

    sim options: `workers` (render worker processes, started by warm_up; None = one per
    CPU, 0 or 1 = render in-process) and `jpeg_quality` (the workers encode the frames).
    """
    options = options or {}
    if name == "sim":
        from inference.sim import SimEngine

        return SimEngine(chunk_frames=chunk_frames, workers=options.get("workers"),
                         jpeg_quality=options.get("jpeg_quality", 85))
    if name == "lingbot-fast":
        from inference.lingbot.engine import LingbotFastEngine

        return LingbotFastEngine.from_model_dir(model_dir, **options)
    raise ValueError(f"unknown engine {name!r}: expected 'sim' or 'lingbot-fast'")

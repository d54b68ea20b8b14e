"""Build an engine by name; heavy imports (torch) happen only for engines that need them."""

from __future__ import annotations

from inference.engine.base import WorldEngine


def make_engine(name: str, *, chunk_frames: int = 4, model_dir: str = "", options: dict | None = None) -> WorldEngine:
    """Instantiate `sim` or `lingbot-fast`; raises ValueError naming the known engines."""
    options = options or {}
    if name == "sim":
        from inference.sim import SimEngine

        return SimEngine(chunk_frames=chunk_frames)
    if name == "lingbot-fast":
        from inference.lingbot.engine import LingbotFastEngine

        return LingbotFastEngine.from_model_dir(model_dir, **options)
    raise ValueError(f"unknown engine {name!r}: expected 'sim' or 'lingbot-fast'")

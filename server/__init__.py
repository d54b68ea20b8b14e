"""The asyncio front: HTTP + WebSocket endpoints, sessions, pacing, engine supervision.

Nothing in this package imports torch; the engine runs in its own process.
"""

__version__ = "0.1.0"

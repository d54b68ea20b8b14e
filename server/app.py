"""Wire the front together: settings, engine supervisor, WebSocket + HTTP servers, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from functools import partial

from aiohttp import web
from websockets.asyncio.server import serve

from server.http_routes import build_app
from server.hub import SessionHub
from server.metrics import FrontMetrics
from server.settings import Settings, SettingsError
from server.ws_handler import handle_connection

log = logging.getLogger("front")


def _build_upsampler(settings: Settings):
    """The prompt upsampler, or None when it is disabled (UPSAMPLER unset or 0)."""
    try:
        from inference.upsampler import PromptUpsampler, UpsamplerConfig
    except ImportError:  # package not present in this checkout
        return None
    config = UpsamplerConfig.from_env(run_dir=settings.run_dir)
    return PromptUpsampler(config) if config.enabled else None


async def run_server(settings: Settings, stop: asyncio.Event) -> None:
    """Serve until `stop` is set, then close clients with 1001 and stop the engine."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    metrics = FrontMetrics()
    upsampler = _build_upsampler(settings)
    hub = SessionHub(settings, metrics, upsampler)
    origins = None if settings.allowed_origins is None else [*settings.allowed_origins, None]
    ws_server = await serve(partial(handle_connection, hub=hub), settings.ws_host, settings.ws_port,
                            max_size=settings.max_message_bytes, compression=None, origins=origins,
                            ping_interval=20, ping_timeout=20, max_queue=32)
    ws_port = ws_server.sockets[0].getsockname()[1] if ws_server.sockets else settings.ws_port
    runner = web.AppRunner(build_app(hub, ws_port), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    http_port = runner.addresses[0][1]
    ports = {"http": http_port, "ws": ws_port, "pid": os.getpid()}
    (settings.run_dir / "ports.json").write_text(json.dumps(ports) + "\n")
    log.info("listening: http://%s:%d (HTTP) ws://%s:%d (WebSocket); engine %s; run dir %s",
             settings.http_host, http_port, settings.ws_host, ws_port, settings.engine, settings.run_dir)
    if upsampler is not None:
        await upsampler.start()
    await hub.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: closing client connections (1001)")
        ws_server.close(close_connections=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ws_server.wait_closed(), timeout=3.0)
        await hub.stop()
        if upsampler is not None:
            await upsampler.stop()
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            (settings.run_dir / "ports.json").unlink()
        log.info("stopped")


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [front] %(name)s: %(message)s")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_server(settings, stop)

    try:
        asyncio.run(_main())
    except OSError as exc:  # typically a port already in use
        log.error("cannot start: %s", exc)
        return 1
    return 0

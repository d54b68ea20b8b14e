"""Wire the front together: settings, engine supervisor, WebSocket + HTTP servers, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import sys

from aiohttp import web
from websockets.asyncio.server import serve

from server import log_limit
from server.http_guard import HttpGuard
from server.http_routes import build_app
from server.hub import SessionHub
from server.metrics import FrontMetrics
from server.settings import Settings, SettingsError
from server.ws_guard import GuardedConnection
from server.registry import ConnectionRegistry
from server.ws_handler import CLOSE_TIMEOUT_S

log = logging.getLogger("front")


def _build_upsampler(settings: Settings):
    """The prompt upsampler, or None when it is disabled (UPSAMPLER unset or 0)."""
    try:
        from inference.upsampler import PromptUpsampler, UpsamplerConfig
    except ImportError:  # package not present in this checkout
        return None
    config = UpsamplerConfig.from_env(run_dir=settings.run_dir)
    return PromptUpsampler(config) if config.enabled else None


FD_RESERVE = 64  # descriptors kept for the engine socket, logs, run files and the upsampler


def fit_connection_caps(settings: Settings) -> None:
    """Raise the open-files limit to its hard limit and keep both connection caps within it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    room = soft - FD_RESERVE
    wanted = settings.max_connections + settings.max_http_connections
    if room < wanted:
        ws = max(1, room * settings.max_connections // max(1, wanted))
        http = max(1, room - ws)
        log.warning("open-files limit %d is below MAX_CONNECTIONS %d + MAX_HTTP_CONNECTIONS %d + %d; "
                    "using %d and %d", soft, settings.max_connections, settings.max_http_connections,
                    FD_RESERVE, ws, http)
        settings.max_connections, settings.max_http_connections = ws, http


def _connection_cap(settings: Settings, holder: dict):
    """websockets process_request: refuse the handshake with 503 beyond MAX_CONNECTIONS."""

    def check(connection, request):
        server = holder.get("server")
        if server is not None and len(server.handler_tasks) > settings.max_connections:
            response = connection.respond(503, f"the server holds {settings.max_connections} connections "
                                               "(MAX_CONNECTIONS); try again later\n")
            response.headers["Retry-After"] = "5"
            return response
        return None

    return check


async def _serve_http(hub: SessionHub, settings: Settings, ws_port: int):
    """aiohttp behind the connection guard; returns (runner, server, port)."""
    guard = HttpGuard(settings.max_http_connections)
    app = build_app(hub, ws_port, middlewares=[guard.middleware])
    # keepalive_timeout also runs before the first request: a connection that sends no complete request
    # within HANDSHAKE_TIMEOUT_S is closed (slowloris); handler_cancellation stops work for a client that left.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                           keepalive_timeout=settings.handshake_timeout_s)
    await runner.setup()
    guard.factory = runner.server
    server = await asyncio.get_running_loop().create_server(guard, settings.http_host, settings.http_port)
    return runner, server, server.sockets[0].getsockname()[1]


async def run_server(settings: Settings, stop: asyncio.Event) -> None:
    """Serve until `stop` is set, then close clients with 1001 and stop the engine."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    fit_connection_caps(settings)
    metrics = FrontMetrics()
    upsampler = _build_upsampler(settings)
    hub = SessionHub(settings, metrics, upsampler)
    registry = ConnectionRegistry(hub)
    origins = None if settings.allowed_origins is None else [*settings.allowed_origins, None]
    holder: dict = {}
    ws_server = await serve(registry.handle, settings.ws_host, settings.ws_port,
                            max_size=settings.max_message_bytes, compression=None, origins=origins,
                            ping_interval=20, ping_timeout=20, max_queue=32,
                            open_timeout=settings.handshake_timeout_s, close_timeout=CLOSE_TIMEOUT_S,
                            process_request=_connection_cap(settings, holder), create_connection=GuardedConnection)
    holder["server"] = ws_server
    ws_port = ws_server.sockets[0].getsockname()[1] if ws_server.sockets else settings.ws_port
    runner, http_server, http_port = await _serve_http(hub, settings, ws_port)
    registry.start()
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
        await registry.stop()
        http_server.close()
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
    for handler in logging.getLogger().handlers:
        log_limit.install(handler)

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

"""HTTP endpoints on :8080: probes, status, test frames, metrics, the web page and its config."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from pathlib import Path

from aiohttp import web

from server import __version__
from server.engine_link import EngineUnavailable
from server.hub import SessionHub
from server.messages import ClientError, image_field, prompt_field
from server.testframe import TestFrameRefused

FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"
HUB_KEY = web.AppKey("hub", SessionHub)
WS_PORT_KEY = web.AppKey("ws_port", int)
MAX_TEST_FRAME_SIDE = 2048


def _json(data: dict, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers,
                             dumps=lambda o: json.dumps(o, separators=(",", ":"), allow_nan=False))


def _authorised(request: web.Request) -> bool:
    token = request.app[HUB_KEY].settings.auth_token
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _deny() -> web.Response:
    return web.json_response({"error": "unauthorized", "message": "send Authorization: Bearer <AUTH_TOKEN>"},
                             status=401, headers={"WWW-Authenticate": "Bearer"})


async def health(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    return _json({"status": "ok", "version": __version__, "uptime_s": round(time.time() - hub.started_at, 1)})


async def ready(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    reason = hub.engine.not_ready_reason()
    if reason is None:
        return _json({"ready": True, "engine": hub.engine.info.engine, "sessions": len(hub.sessions),
                      "max_sessions": hub.settings.max_sessions})
    return _json({"ready": False, "reason": reason}, status=503)


async def status(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _deny()
    hub = request.app[HUB_KEY]
    body = {"version": __version__, "uptime_s": round(time.time() - hub.started_at, 1), **hub.status()}
    return _json(body)


async def metrics(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _deny()
    hub = request.app[HUB_KEY]
    return web.Response(body=hub.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": "bad_field", "message": f"{name}={raw[:20]!r} is not an integer"}),
                                 content_type="application/json") from None
    if not lo <= value <= hi:
        raise web.HTTPBadRequest(text=json.dumps({"error": "bad_field", "message": f"{name}={value} is outside {lo}..{hi}"}),
                                 content_type="application/json")
    return value


async def test_frame(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _deny()
    hub = request.app[HUB_KEY]
    prompt = request.query.get("prompt", "").strip() or "rolling green hills under a clear sky"
    if len(prompt) > 2000:
        return _json({"error": "bad_field", "message": f"prompt has {len(prompt)} characters; at most 2000"}, 400)
    seed = _int_param(request, "seed", 0, 0, 2**63 - 1)
    width = _int_param(request, "width", 832, 16, MAX_TEST_FRAME_SIDE)
    height = _int_param(request, "height", 480, 16, MAX_TEST_FRAME_SIDE)
    reason = hub.engine.not_ready_reason()
    if reason is not None:
        return _json({"error": "not_ready", "message": reason}, 503, {"Retry-After": "5"})
    try:
        jpeg = await hub.test_frames.render(prompt, seed, width, height, owner=request.remote or "")
    except TestFrameRefused as exc:
        return _json({"error": "busy", "message": exc.message}, exc.status, {"Retry-After": str(exc.retry_after_s)})
    except EngineUnavailable as exc:
        return _json({"error": "not_ready", "message": str(exc)}, 503, {"Retry-After": "5"})
    except ValueError as exc:
        return _json({"error": "bad_field", "message": str(exc)}, 400)
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def config(request: web.Request) -> web.Response:
    """What the page needs to connect: WebSocket port, sizes, whether a token is required."""
    hub = request.app[HUB_KEY]
    info = hub.engine.info
    return _json({"ws_port": request.app[WS_PORT_KEY], "ws_path": "/", "fps": 16,
                  "engine": info.engine if info else hub.settings.engine,
                  "sizes": info.sizes if info else [], "default_size": info.default_size if info else "832*480",
                  "auth_required": bool(hub.settings.auth_token),
                  "upsampler": bool(hub.upsampler and hub.upsampler.status().get("state") != "disabled")})


async def upsample(request: web.Request) -> web.Response:
    """POST {"prompt": ..., "image": base64?} -> the rewrite the upsampler produced (or the fallback)."""
    if not _authorised(request):
        return _deny()
    hub = request.app[HUB_KEY]
    try:
        body = json.loads(await asyncio.wait_for(request.read(), hub.settings.handshake_timeout_s))
        if not isinstance(body, dict):
            raise ClientError("bad_json", "body must be a JSON object")
        prompt, image = prompt_field(body, required=True), image_field(body.get("image"))
    except ClientError as exc:
        return _json({"error": exc.code, "message": exc.message}, 400)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _json({"error": "bad_json", "message": "body is not valid JSON"}, 400)
    except asyncio.TimeoutError:
        return _json({"error": "bad_json", "message": f"body not received within "
                                                      f"{hub.settings.handshake_timeout_s:g} s"}, 408)
    if hub.upsampler is None:
        return _json({"error": "upsampler_failed", "message": "prompt upsampling is not enabled (UPSAMPLER=1)"}, 503)
    result = await hub.upsampler.upsample(prompt, image)
    return _json({"prompt": result.prompt, "upsampled": result.upsampled, "cached": result.cached,
                  "error": result.error})


async def index(request: web.Request) -> web.StreamResponse:
    page = FRONTEND_DIR / "index.html"
    if page.is_file():
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})
    return web.Response(text="<!doctype html><title>World server</title><p>The frontend is not installed.</p>",
                        content_type="text/html")


def build_app(hub: SessionHub, ws_port: int, middlewares=()) -> web.Application:
    app = web.Application(client_max_size=hub.settings.max_message_bytes, middlewares=list(middlewares))
    app[HUB_KEY] = hub
    app[WS_PORT_KEY] = ws_port
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/test-frame", test_frame)
    app.router.add_get("/config", config)
    app.router.add_post("/upsample", upsample)
    app.router.add_get("/", index)
    if FRONTEND_DIR.is_dir():
        app.router.add_static("/static/", FRONTEND_DIR, show_index=False, follow_symlinks=False)
    return app

"""One WebSocket connection: validate messages, authorise, rate-limit, drive its session."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time

from websockets.exceptions import ConnectionClosed

from server.admission import Waiting
from server.channel import ClientChannel
from server.hub import SessionHub
from server.messages import ClientError, Control, Init, Ping, PromptChange, Reset, parse_message
from server.session import Session, SessionParams

log = logging.getLogger("front.ws")

ABUSE_WINDOW_S = 5.0


class RateLimiter:
    """Token bucket per connection; sustained abuse (many refusals in a window) closes with 1008."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.refusals: list[float] = []
        self.last_error_at = 0.0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.refusals = [t for t in self.refusals if t > now - ABUSE_WINDOW_S]
        self.refusals.append(now)
        return False

    @property
    def abusive(self) -> bool:
        return len(self.refusals) > self.rate * ABUSE_WINDOW_S

    def should_report(self) -> bool:
        now = time.monotonic()
        if now - self.last_error_at >= 1.0:
            self.last_error_at = now
            return True
        return False


class Connection:
    """State of one client connection (at most one session at a time)."""

    def __init__(self, ws, hub: SessionHub):
        self.ws = ws
        self.hub = hub
        self.settings = hub.settings
        self.channel = ClientChannel(ws, hub.settings.send_queue_frames)
        self.limiter = RateLimiter(hub.settings.control_rate, hub.settings.control_burst)
        self.session: Session | None = None
        self.waiting = False  # an init of this connection waits in the admission queue
        self.authorised = not hub.settings.auth_token

    def error(self, code: str, message: str) -> None:
        self.hub.metrics.client_errors.labels(code).inc()
        self.channel.send_json({"type": "error", "code": code, "message": message})

    async def serve(self) -> None:
        self.channel.start()
        try:
            async for raw in self.ws:
                if not await self._handle(raw):
                    break
        except ConnectionClosed:
            pass
        finally:
            self.hub.dequeue(self)
            if self.session is not None:
                await self.hub.close_session(self.session)
            await self.channel.close()

    async def _handle(self, raw) -> bool:
        """Handle one message; returns False when the connection must end."""
        if isinstance(raw, bytes):
            self.error("bad_json", "binary messages are not accepted; send JSON text")
            return True
        if not self.limiter.allow():
            if self.limiter.abusive:
                log.warning("closing %s: message flood", self.ws.remote_address)
                await self.ws.close(1008, "message rate limit exceeded")
                return False
            if self.limiter.should_report():
                self.error("rate_limited", f"more than {self.settings.control_rate:g} messages/s; "
                                           "messages are being dropped")
            return True
        try:
            msg = parse_message(raw)
            if isinstance(msg, Init):
                return await self._init(msg)
            if isinstance(msg, Ping):
                self.channel.send_json({"type": "pong", "t": msg.t})
                return True
            session = self.session
            if session is None and self.waiting:
                return True  # queued: input before the world exists is dropped
            if session is None or session.closed:
                raise ClientError("not_initialized", "send an init message first")
            if isinstance(msg, Control):
                session.key(msg.key, msg.down, time.time())
            elif isinstance(msg, PromptChange):
                session.set_prompt(msg.prompt)
            elif isinstance(msg, Reset):
                session.reset()
        except ClientError as exc:
            self.error(exc.code, exc.message)
        except Exception as exc:  # e.g. engine unavailable mid-request: tell the client, keep going
            log.info("message failed: %s", exc)
            self.error("engine_failed", f"the engine could not take the request: {exc}")
        return True

    async def _init(self, msg: Init) -> bool:
        token = self.settings.auth_token
        if token and not (msg.token and hmac.compare_digest(msg.token.encode(), token.encode())):
            self.error("unauthorized", "missing or wrong token")
            await asyncio.sleep(0.05)  # let the error go out before the close frame
            await self.ws.close(1008, "unauthorized")
            return False
        self.hub.dequeue(self)  # a second init while queued goes to the back with its new fields
        self.waiting = False
        if self.session is not None:  # a second init restarts the world
            await self.hub.close_session(self.session)
            self.session = None
        info = self.hub.engine.info
        sizes = info.sizes if info else None
        size = msg.size or (info.default_size if info else "832*480")
        if sizes is not None and size not in sizes:
            raise ClientError("bad_field", f"field 'size' {size[:20]!r} is not one of {', '.join(sizes)}")
        try:
            width, height = (int(v) for v in size.split("*"))
        except ValueError:
            raise ClientError("bad_field", f"field 'size' {size[:20]!r} must look like 832*480") from None
        room = self.hub.has_room(size) and not len(self.hub.admission)
        if not room and (self.settings.admission == "reject" or self.hub.admission.full):
            return await self._busy()
        prompt = await self._final_prompt(msg)
        params = SessionParams(prompt=prompt, seed=msg.seed if msg.seed is not None else secrets.randbelow(2**31),
                               width=width, height=height, image=msg.image, engine=self.settings.engine)
        if self.hub.has_room(size) and not len(self.hub.admission):
            self._start(params)
            return True
        entry = Waiting(owner=self, size=size, start=lambda: self._start(params), notify=self._queued)
        if self.hub.enqueue(entry) is None:
            return await self._busy()
        self.waiting = True
        return True

    async def _busy(self) -> bool:
        """Refuse an init (no room, and no queueing or a full queue) and close with 1013."""
        if self.hub.full:
            why = f"the server is at its limit of {self.settings.max_sessions} sessions"
        else:
            why = "the engine is at its measured capacity for 16 fps"
        if self.settings.admission == "queue":
            why += f" and {len(self.hub.admission)} of {self.settings.max_queue} queue places are taken"
        self.error("busy", f"{why}; try again later")
        await asyncio.sleep(0.05)  # let the error go out before the close frame
        await self.ws.close(1013, "server busy")
        return False

    def _queued(self, position: int) -> None:
        self.channel.send_json({"type": "status", "state": "queued", "position": position})

    def _start(self, params: SessionParams) -> None:
        """Create the session (now, or when the admission queue lets this connection in)."""
        self.waiting = False
        info = self.hub.engine.info
        first, rest = (info.first_chunk_frames, info.chunk_frames) if info else (self.settings.chunk_frames,) * 2
        self.session = Session(params, self.channel, send_engine=self.hub.engine.send, metrics=self.hub.metrics,
                               first_chunk_frames=first, chunk_frames=rest)
        self.session.on_opened_reply = self._session_reply
        self.hub.add_session(self.session)

    async def _final_prompt(self, msg: Init) -> str:
        if not msg.upsample:
            return msg.prompt
        upsampler = self.hub.upsampler
        if upsampler is None:
            self.error("upsampler_failed", "prompt upsampling is not enabled on this server; using your prompt")
            return msg.prompt
        result = await upsampler.upsample(msg.prompt, msg.image)
        if not result.upsampled:
            self.error("upsampler_failed", f"prompt upsampling failed ({result.error}); using your prompt")
        return result.prompt

    def _session_reply(self, session: Session) -> None:
        p = session.params
        self.channel.send_json({"type": "session", "session_id": session.id, "prompt": p.prompt,
                                "width": p.width, "height": p.height, "fps": 16, "engine": p.engine,
                                "seed": p.seed})


async def handle_connection(ws, hub: SessionHub) -> None:
    """websockets handler: one Connection per socket."""
    conn = Connection(ws, hub)
    with contextlib.suppress(ConnectionClosed):
        await conn.serve()

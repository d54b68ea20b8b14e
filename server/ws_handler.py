"""One WebSocket connection: parse, authorise and budget its messages, run its init (make-before-break), own its channel.

An init is checked field by field before anything changes, then runs as
the connection's one init task (a newer init cancels it: latest wins):
admission, prompt upsampling, a *new* world opened under a new session id
while the current one keeps streaming, and only when the new world is open
the switch. A refusal or a failed open leaves the current world running and
says so (`"world": "kept"` in the error). The reader never waits on any of
this, so keys keep steering the current world meanwhile.

A connection may instead take an existing world (server/joins.py): `resume`
continues its own world after a dropped connection, `watch` follows someone
else's read-only. When the socket of a world's owner is lost (no clean close
from the client, no close by the server's rules), the world is kept for
RESUME_GRACE_S instead of closed (`SessionHub.keep`).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import secrets
import time

from websockets.exceptions import ConnectionClosed

from server import joins
from server.admission import AdmissionBusy
from server.channel import SEND_BUFFER_LIMIT, ClientChannel
from server.engine_link import EngineUnavailable
from server.hub import SessionHub
from server.limits import MessageBudget, TokenBucket
from server.messages import (ClientError, Control, Init, Look, Ping, PromptChange, Reset, Resume, Watch,
                             parse_message)
from server.session import OpenFailed, Session, SessionParams

log = logging.getLogger("front.ws")

CLOSE_TIMEOUT_S = 5.0  # closing handshake; the writer is aborted after it
RESET_RATE, RESET_BURST = 1.0, 3  # resets per second per connection (each restarts the stream with a first chunk)
LOOK_RATE, LOOK_BURST = 40.0, 40  # look messages per second per connection (the page sends at most 30); more dropped
CLEAN_CLOSE_CODES = (1000, 1001)  # a client that closes with these has left: its world is not kept
SOCKET_SEND_BUFFER = 256 * 1024  # kernel send buffer per client (~5 frames): a stalled client is noticed in a second
_ordinals = itertools.count(1)


class Connection:
    """State of one client connection: its channel, budgets, current world and pending init."""

    def __init__(self, ws, hub: SessionHub):
        self.id = f"conn{next(_ordinals)}"
        self.ws = ws
        self.hub = hub
        self.settings = s = hub.settings
        self.channel = ClientChannel(ws, s.send_queue_frames)
        self.messages = MessageBudget(s.control_rate, s.control_burst)
        self.inits = TokenBucket(s.init_rate, s.init_burst)
        self.resets = TokenBucket(RESET_RATE, RESET_BURST)
        self.looks = TokenBucket(LOOK_RATE, LOOK_BURST)
        self.session: Session | None = None  # the world this connection owns
        self.watching: Session | None = None  # or the world it watches (read-only)
        self.init_task: asyncio.Task | None = None
        self.closing = False
        self.world_ends = False  # the server closes this connection by its rules: its world is not kept
        self.auth_token: str | None = None  # the access token its world was started or resumed with
        self.idle_since: float | None = time.monotonic()  # no world and no init pending since then

    # -- the session's listener ------------------------------------------------

    def session_event(self, session: Session, event: dict) -> None:
        kind = event.get("type")
        if session is self.watching:
            if kind in ("stats", "status", "path"):
                self.channel.send_json({**event, **self.delivery()} if kind == "stats" else event)
            return
        # A world being opened behind the current one stays silent; with no current world its status shows.
        if session is self.session or (self.session is None and kind in ("status", "error")):
            if kind == "stats":
                event = {**event, **self.delivery()}
            self.channel.send_json(event)

    def session_frame(self, session: Session, jpeg: bytes) -> None:
        if session is self.session or session is self.watching:
            dropped = self.channel.send_frame(jpeg)
            if dropped:
                self.hub.metrics.frames_dropped(dropped)

    def session_closed(self, session: Session) -> None:
        if session is self.session:
            self.session = None
            self._mark_idle()
        elif session is self.watching:
            self.watching = None
            self.channel.send_json({"type": "status", "state": "ended",
                                    "message": "the world you were watching has ended"})
            self.close(1000, "world ended")

    def watch_moved(self, new: Session) -> None:
        """The watched world's owner started a new world: follow it."""
        self.watching = new
        self.channel.begin_stream(new)
        new.subscribe(self)
        self.channel.send_json(joins.watching_reply(new))

    def wants_frames(self) -> bool:
        return not self.channel.congested(time.monotonic())

    def delivery(self) -> dict:
        return {"dropped": self.channel.frames_dropped, "queue": self.channel.queued}

    # -- reading ---------------------------------------------------------------

    def error(self, code: str, message: str, **extra) -> None:
        self.hub.metrics.client_errors.labels(code).inc()
        self.channel.send_json({"type": "error", "code": code, "message": message, **extra})

    async def serve(self) -> None:
        self.channel.start()
        try:
            async for raw in self.ws:
                if not self.closing:  # once closing, read on (and discard) until the closing handshake ends
                    self._handle(raw)
        except ConnectionClosed:
            pass
        finally:
            dropped_for = getattr(self.ws, "dropped_for", None)
            if dropped_for is not None and not self.closing:  # the connection class dropped it (ping flood)
                log.warning("dropped %s (%s): %s", self.id, self.ws.remote_address, dropped_for)
                self.hub.metrics.connections_dropped.labels(dropped_for).inc()
            self.closing = True
            left = getattr(self.ws, "close_code", None) in CLEAN_CLOSE_CODES and self.channel.close_code is None
            self._end_world(keep=not (self.world_ends or left))
            await self.channel.finish(CLOSE_TIMEOUT_S)

    def _handle(self, raw) -> None:
        if not self.messages.take():
            if self.messages.abusive:
                log.warning("closing %s: message flood", self.ws.remote_address)
                self.hub.metrics.connections_dropped.labels("flood").inc()
                self.close(1008, "message rate limit exceeded")
            elif self.messages.should_report():
                self.error("rate_limited", f"more than {self.settings.control_rate:g} messages/s; "
                                           "messages are being dropped")
            return
        if isinstance(raw, bytes):
            self.error("bad_json", "binary messages are not accepted; send JSON text")
            return
        try:
            msg = parse_message(raw)
            if isinstance(msg, Init):
                try:
                    self._init(msg)
                except ClientError as exc:
                    exc.kind = "init"
                    raise
            elif isinstance(msg, Ping):
                self.channel.send_json({"type": "pong", "t": msg.t})
            elif isinstance(msg, (Resume, Watch)):
                self._join(msg)
            elif self.watching is not None:
                raise ClientError("read_only", "this connection watches a world; it cannot steer it")
            elif self.session is None:
                if self.init_task is None:
                    raise ClientError("not_initialized", "send an init message first")
                # input before the first world exists is dropped
            elif isinstance(msg, Control):
                self.session.key(msg.key, msg.down)
            elif isinstance(msg, Look):
                self._look(msg)
            elif isinstance(msg, PromptChange):
                self.session.set_prompt(msg.prompt)
            elif isinstance(msg, Reset):
                if self.resets.take():
                    self.session.reset()
                elif self.resets.should_report():
                    self.error("rate_limited", f"at most {RESET_BURST} resets at once, then {RESET_RATE:g} per second")
        except ClientError as exc:
            if exc.kind == "init" and self.session is not None:  # a refused re-init changes nothing
                self.error(exc.code, f"{exc.message}; your current world keeps running", world="kept")
            else:
                self.error(exc.code, exc.message)
        except EngineUnavailable as exc:  # e.g. the engine restarts: tell the client, keep going
            self.error("engine_failed", f"the engine could not take the request: {exc}")

    def _look(self, msg: Look) -> None:
        if not self.looks.take():
            if self.looks.should_report():
                self.error("rate_limited", f"more than {LOOK_RATE:g} look messages/s; add deltas up and send "
                                           "them less often")
            return
        self.session.look(msg.yaw, msg.pitch)

    def _join(self, msg: Resume | Watch) -> None:
        """`resume` or `watch`: take an existing world (spends the init budget: each is a world lookup)."""
        if self.watching is not None or self.session is not None or self.init_task is not None:
            raise ClientError("bad_field", f"{'resume' if isinstance(msg, Resume) else 'watch'} needs a connection "
                                           "without a world; open a new connection for it")
        if not self.inits.take():
            if self.inits.should_report():
                self.error("rate_limited", f"at most {self.settings.init_burst} inits, resumes or watches at once, "
                                           f"then one every {1 / self.settings.init_rate:g} s (INIT_RATE)")
            return
        if not self._authorised(msg.token):
            return
        if isinstance(msg, Resume):
            joins.resume(self, msg)
        else:
            joins.watch(self, msg)

    def _authorised(self, given: str | None) -> bool:
        """Check the access token (AUTH_TOKEN); a wrong one is told and closed (1008)."""
        token = self.settings.auth_token
        if token and not (given and hmac.compare_digest(given.encode(), token.encode())):
            self.error("unauthorized", "missing or wrong token")
            self.close(1008, "unauthorized")
            return False
        return True

    def take_world(self, session: Session, stream_index: int) -> None:
        """Own `session` (a resumed one): its frames are counted from `stream_index` on this channel."""
        self.session = session
        self.idle_since = None
        self.channel.begin_stream(session, stream_index)

    def give_up_world(self, why: str) -> None:
        """Another connection resumed this connection's world: hand it over (kept undelivered frames) and close."""
        session, self.session = self.session, None
        if session is not None:
            session.unsubscribe(self)
            first, frames = self.channel.undelivered()
            session.detach(first, frames)
        self.error("resumed_elsewhere", why)
        self.close(1000, "resumed elsewhere")

    # -- init -----------------------------------------------------------------

    def _size(self, requested: str | None) -> tuple[str, int, int]:
        info = self.hub.engine.info
        size = requested or (info.default_size if info else "832*480")
        if info is not None and size not in info.sizes:
            raise ClientError("bad_field", f"field 'size' {size[:20]!r} is not one of {', '.join(info.sizes)}")
        try:
            width, height = (int(v) for v in size.split("*"))
        except ValueError:
            raise ClientError("bad_field", f"field 'size' {size[:20]!r} must look like 832*480") from None
        if not (16 <= width <= 4096 and 16 <= height <= 4096):
            raise ClientError("bad_field", f"field 'size' {size[:20]!r} is outside 16..4096 per side")
        return size, width, height

    def _init(self, msg: Init) -> None:
        """Check every field, then start the init task (replacing a pending one); nothing is torn down here."""
        if self.watching is not None:
            raise ClientError("read_only", "this connection watches a world; open a new connection to start one")
        if not self._authorised(msg.token):
            return
        size, width, height = self._size(msg.size)
        if not self.inits.take():
            if self.inits.should_report():
                kept = "; your current world keeps running" if self.session else ""
                self.error("rate_limited", f"at most {self.settings.init_burst} inits at once, then one every "
                                           f"{1 / self.settings.init_rate:g} s (INIT_RATE){kept}",
                           **({"world": "kept"} if self.session else {}))
            return
        if self.init_task is not None:
            self.init_task.cancel()  # latest wins: its pending world is closed by its own cleanup
        self.idle_since = None
        self.init_task = asyncio.create_task(self._init_flow(msg, size, width, height), name=f"init-{self.id}")

    async def _init_flow(self, msg: Init, size: str, width: int, height: int) -> None:
        ticket = object()  # this init's place in admission (a newer init of this connection gets its own)
        new: Session | None = None
        try:
            try:
                await self.hub.admit(ticket, size, replacing=self.session, notify=self._queued)
            except AdmissionBusy as exc:
                self._refused(str(exc))
                return
            prompt = await self._final_prompt(msg)
            params = SessionParams(prompt=prompt, seed=msg.seed if msg.seed is not None else secrets.randbelow(2**31),
                                   width=width, height=height, image=msg.image, engine=self.settings.engine)
            new = self.hub.create_session(params, ticket, self.id, replaces=self.session)
            new.subscribe(self)
            self.hub.open_session(new)
            try:
                await new.opened
            except OpenFailed as exc:
                self._open_failed(exc)
                return
            self._switch(new, msg)
            new = None
        finally:
            self.hub.release(ticket)
            if new is not None:  # refused, failed, superseded or disconnected before the switch
                new.unsubscribe(self)
                self.hub.close_session(new)
            if self.init_task is asyncio.current_task():
                self.init_task = None
                self._mark_idle()

    def _switch(self, new: Session, init: Init) -> None:
        """Make the freshly opened world the connection's; the old one stops now (make-before-break)."""
        old = self.session
        self.channel.begin_stream(new)
        self.session = new
        self.auth_token = init.token if self.settings.auth_token else None
        self.channel.send_json({**joins.world_reply(self, new, "session"), "replaced": old.id if old else None})
        new.activate(self)
        if old is not None:
            self.hub.move_viewers(old, new)
            old.unsubscribe(self)
            self.hub.close_session(old)

    def _refused(self, why: str) -> None:
        """No room for the world: a running world is kept; without one the connection closes with 1013."""
        if self.session is not None:
            self.error("busy", f"{why}; your current world keeps running", world="kept")
            return
        self.error("busy", f"{why}; try again later")
        self.close(1013, "server busy")

    def _open_failed(self, exc: OpenFailed) -> None:
        if self.session is not None:
            self.error(exc.code, f"{exc.message}; your current world keeps running", world="kept")
        else:
            self.error(exc.code, exc.message)

    def _queued(self, position: int) -> None:
        self.channel.send_json({"type": "status", "state": "queued", "position": position})

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

    # -- ending ---------------------------------------------------------------

    def _mark_idle(self) -> None:
        if self.session is None and self.watching is None and self.init_task is None and self.idle_since is None:
            self.idle_since = time.monotonic()

    def _end_world(self, keep: bool) -> None:
        """Cancel the pending init, stop watching, and keep (`keep`, when it can be kept) or free the world."""
        if self.init_task is not None:
            self.init_task.cancel()
        if self.watching is not None:
            self.watching.unsubscribe(self)
            self.watching = None
        session, self.session = self.session, None
        if session is None:
            return
        session.unsubscribe(self)
        first, frames = self.channel.undelivered()
        if not (keep and self.hub.keep(session, first, frames)):
            reason = "ended" if not keep else "not_kept" if session.is_open else "engine_restarted"
            self.hub.close_session(session, reason)

    def close(self, code: int, reason: str) -> None:
        """Close after the messages already queued (the client reads why first); the world is freed now."""
        if self.closing:
            return
        self.closing = True
        self.world_ends = True
        self._end_world(keep=False)
        self.channel.close(code, reason)

    def abort(self, reason: str, why: str) -> None:
        """The client takes no data: drop the connection; its world is kept for a resume (a network may blip)."""
        log.warning("dropping %s (%s): %s", self.id, self.ws.remote_address, why)
        self.hub.metrics.connections_dropped.labels(reason).inc()
        self.closing = True
        self._end_world(keep=True)
        self.channel.abort()

    def check(self, now: float) -> None:
        """Watchdog tick: a client that takes no data is dropped; one without a world for too long is closed."""
        blocked = self.channel.blocked_s(now)
        if blocked > self.settings.slow_client_timeout_s:
            self.abort("slow_client", f"a send has waited {blocked:.1f} s (SLOW_CLIENT_TIMEOUT_S)")
        elif self.channel.buffered_bytes() > SEND_BUFFER_LIMIT:
            self.abort("send_buffer", f"{self.channel.buffered_bytes()} bytes wait in its socket buffer")
        elif (not self.closing and self.idle_since is not None
              and now - self.idle_since > self.settings.init_timeout_s):
            self.error("not_initialized", f"no world was started within {self.settings.init_timeout_s:g} s "
                                          "(INIT_TIMEOUT_S); closing", idle=True)
            self.hub.metrics.connections_dropped.labels("idle").inc()
            self.close(1008, "no init")

"""Rank 0's I/O thread: owns the ZeroMQ socket to the front, heartbeats, parent watch.

The step loop never touches the front's socket. Inbound messages land in a
bounded queue the loop drains; outbound messages go through an inproc PUSH
socket owned by the loop's thread, so every socket has exactly one owner.

The engine is useless without this thread, so its failure ends the process
(the front sees the exit and restarts the engine), and an orphaned engine
whose main thread is stuck (a long barrier, a hung collective) is ended after
a grace period instead of lingering.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time

import msgspec
import zmq

from inference import protocol as P

log = logging.getLogger("engine.link")

INBOUND_LIMIT = 4096  # front sends at most one pending step per session plus a few control messages
ORPHAN_GRACE_S = 10.0  # an orphan's clean shutdown may take this long before the process is ended
EXIT_LINK_FAILED = 70  # exit status when the I/O thread fails (os.EX_SOFTWARE)


class FrontLink:
    """Connects to the front's PAIR socket and shuttles messages on a daemon thread."""

    def __init__(self, endpoint: str, *, heartbeat_s: float = 0.5, status=None, front_pid: int = 0,
                 orphan_grace_s: float = ORPHAN_GRACE_S):
        self.endpoint = endpoint
        self.front_pid = front_pid  # 0: watch only the direct parent
        self.heartbeat_s = heartbeat_s
        self.inbound: queue.Queue = queue.Queue(maxsize=INBOUND_LIMIT)
        self.status = status or (lambda: {})  # called on the I/O thread for heartbeat fields
        self.busy_since: float | None = None  # written by the loop, read by the I/O thread
        self.closed = threading.Event()
        self._ctx = zmq.Context.instance()
        self._out_addr = f"inproc://engine-out-{id(self)}"
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.bind(self._out_addr)
        self._push = self._ctx.socket(zmq.PUSH)  # owned by the loop thread
        self._push.connect(self._out_addr)
        self._parent = os.getppid()
        self._orphan = False
        self.orphan_grace_s = orphan_grace_s
        self._status_failed = False
        self._last_status: P.Heartbeat | None = None
        self._thread = threading.Thread(target=self._run, name="front-link", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, msg: msgspec.Struct, *payloads: bytes) -> None:
        """Queue a message for the front (loop thread only)."""
        self._push.send_multipart([P.encode(msg), *payloads], copy=False)

    def close(self, linger_s: float = 2.0) -> None:
        """Flush what was sent and stop the I/O thread (never blocks on a thread that is gone)."""
        if self._thread.is_alive():
            try:
                self._push.send_multipart([b"__close__"], flags=zmq.NOBLOCK)
            except zmq.Again:
                log.warning("front link backed up at close; not flushing")
            self._thread.join(timeout=linger_s + 1.0)
        self._push.close(linger=0)

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:  # noqa: BLE001 - nothing can reach the front any more: end the engine loudly
            log.critical("front link failed; the engine exits so the front restarts it", exc_info=True)
            logging.shutdown()
            os._exit(EXIT_LINK_FAILED)

    def _serve(self) -> None:
        sock = self._ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(self.endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._pull, zmq.POLLIN)
        next_beat = 0.0
        try:
            while True:
                now = time.time()
                if now >= next_beat:
                    sock.send(P.encode(self._heartbeat(now)))
                    next_beat = now + self.heartbeat_s
                    if not self._orphan and self._orphaned():  # the front (or torchrun) died: do not linger
                        self._orphan = True
                        self._leave_orphaned()
                events = dict(poller.poll(timeout=max(1, int((next_beat - now) * 1000))))
                if self._pull in events:
                    parts = self._pull.recv_multipart(copy=False)
                    if bytes(parts[0]) == b"__close__":
                        return
                    sock.send_multipart(parts, copy=False)
                if sock in events:
                    self._receive(sock.recv_multipart())
        finally:
            sock.close()
            self._pull.close(linger=0)
            self.closed.set()

    def _orphaned(self) -> bool:
        """True once the direct parent or the front process is gone."""
        if os.getppid() != self._parent:
            log.error("parent process %d is gone; engine exits", self._parent)
            return True
        if self.front_pid:
            try:
                os.kill(self.front_pid, 0)
            except ProcessLookupError:
                log.error("front process %d is gone; engine exits", self.front_pid)
                return True
            except PermissionError:  # alive, owned by someone else
                pass
        return False

    def _leave_orphaned(self) -> None:
        """Ask the loop to shut down; end the process if it has not within the grace period."""
        with contextlib.suppress(queue.Full):
            self.inbound.put_nowait(P.Shutdown())

        def end() -> None:
            log.error("engine still running %.0f s after its front left; ending it", self.orphan_grace_s)
            logging.shutdown()
            os._exit(1)

        timer = threading.Timer(self.orphan_grace_s, end)
        timer.daemon = True
        timer.start()

    def _receive(self, parts: list[bytes]) -> None:
        try:
            msg = P.decode_to_engine(parts[0])
        except msgspec.DecodeError as exc:  # a protocol bug, not user input: say so loudly
            log.error("undecodable message from front (%d bytes): %s", len(parts[0]), exc)
            return
        try:
            self.inbound.put_nowait(msg)
        except queue.Full:
            log.error("inbound queue full (%d); dropping %s", INBOUND_LIMIT, type(msg).__name__)

    def _heartbeat(self, now: float) -> P.Heartbeat:
        """A heartbeat with the loop's status fields; a failing status is logged once."""
        try:
            beat = P.Heartbeat(sent_at=now, busy_since=self.busy_since, **self.status())
            self._last_status = beat
            return beat
        except Exception:  # noqa: BLE001 - a bug in a status field must not silence the heartbeat
            if not self._status_failed:
                self._status_failed = True
                log.exception("heartbeat status failed; repeating the last good status")
            last = self._last_status
            return P.Heartbeat(sent_at=now, busy_since=self.busy_since,
                               sessions=last.sessions if last else 0, queued_steps=last.queued_steps if last else 0)

"""Rank 0's step loop: admit front messages, schedule chunks, generate, encode, reply."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

import numpy as np

from inference import protocol as P
from inference.engine.base import ChunkWork, EngineUserError, SessionSpec, WorldEngine
from inference.engine.frames import decode_image, encode_jpeg
from inference.engine.link import FrontLink
from inference.engine.batching import BatchLearner, signature_loads
from inference.engine.scheduler import ChunkScheduler, PendingStep

log = logging.getLogger("engine.loop")


class ChunkTimer:
    """Recent chunk wall times (ms) for heartbeat percentiles; read from the I/O thread."""

    def __init__(self, keep: int = 256):
        self._ms: deque[float] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._ms.append(ms)

    def percentiles(self) -> tuple[float | None, float | None]:
        with self._lock:
            data = list(self._ms)
        if not data:
            return None, None
        return float(np.percentile(data, 50)), float(np.percentile(data, 95))


class EngineLoop:
    """Runs one engine for the front until Shutdown (or a fatal error)."""

    def __init__(self, engine: WorldEngine, link: FrontLink, *, jpeg_quality: int = 85, max_batch: int = 8):
        self.engine = engine
        self.link = link
        self.jpeg_quality = jpeg_quality
        self.scheduler = ChunkScheduler(learner=BatchLearner(max_batch=max_batch))
        info = engine.info()
        self.chunk_period_s = info.chunk_frames / info.fps  # seconds of video one chunk plays
        self.sizes: dict[str, str] = {}  # batching signature -> "W*H" of its sessions
        self.loads: list[dict] = []  # heartbeat view, replaced whole after each step (read by the I/O thread)
        self.mixed_batches = 0
        self.signatures: dict[str, str] = {}  # session_id -> batching signature
        self.timer = ChunkTimer()
        self.stopping = False

    def heartbeat_fields(self) -> dict:
        """Called on the I/O thread: only reads thread-safe or atomic state."""
        p50, p95 = self.timer.percentiles()
        return {"sessions": len(self.signatures), "queued_steps": len(self.scheduler),
                "chunk_ms_p50": p50, "chunk_ms_p95": p95,
                "ranks": [P.RankHealth(rank=0, alive=True, last_seen_s=0.0, **self.engine.health())],
                "batching": [P.SignatureLoad(**load) for load in self.loads], "mixed_batches": self.mixed_batches}

    def run(self) -> None:
        while not self.stopping:
            self._drain(block=len(self.scheduler) == 0)
            if self.stopping:
                break
            batch = self.scheduler.next_batch()
            if batch:
                self._generate(batch)

    def _drain(self, block: bool) -> None:
        """Handle every queued front message; wait briefly for one when idle."""
        try:
            msg = self.link.inbound.get(timeout=0.05) if block else self.link.inbound.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(msg)
            try:
                msg = self.link.inbound.get_nowait()
            except queue.Empty:
                return

    def _handle(self, msg) -> None:
        if isinstance(msg, P.StepChunk):
            sig = self.signatures.get(msg.session_id)
            if sig is None:  # closed while the request was in flight
                log.debug("step for unknown session %s ignored", msg.session_id)
                return
            self.scheduler.submit(PendingStep(request=msg, signature=sig, arrived_at=time.time()))
        elif isinstance(msg, P.OpenSession):
            self._open(msg)
        elif isinstance(msg, P.SetPrompt):
            self._session_call(msg.session_id, self.engine.set_prompt, msg.prompt)
        elif isinstance(msg, P.ResetSession):
            self.scheduler.drop_session(msg.session_id)
            self._session_call(msg.session_id, self.engine.reset)
        elif isinstance(msg, P.CloseSession):
            self.scheduler.drop_session(msg.session_id)
            self.signatures.pop(msg.session_id, None)
            self.engine.close_session(msg.session_id)
            self._update_loads()
        elif isinstance(msg, P.RenderTestFrame):
            self._test_frame(msg)
        elif isinstance(msg, P.Shutdown):
            log.info("shutdown requested")
            self.stopping = True

    def _open(self, msg: P.OpenSession) -> None:
        try:
            image = decode_image(msg.image) if msg.image else None
            spec = SessionSpec(session_id=msg.session_id, prompt=msg.prompt, seed=msg.seed,
                               width=msg.width, height=msg.height, image=image)
            self.scheduler.drop_session(msg.session_id)
            self.engine.close_session(msg.session_id)  # a second init restarts the world
            sig = self.engine.open_session(spec)
        except (EngineUserError, ValueError) as exc:
            code = getattr(exc, "code", "bad_field")
            self.link.send(P.EngineError(code=code, message=str(exc), session_id=msg.session_id))
            return
        self.signatures[msg.session_id] = sig
        self.sizes[sig] = f"{msg.width}*{msg.height}"
        self._update_loads()
        self.link.send(P.SessionOpened(session_id=msg.session_id, prompt=msg.prompt,
                                       width=msg.width, height=msg.height, signature=sig))

    def _session_call(self, session_id: str, fn, *args) -> None:
        if session_id not in self.signatures:
            return
        try:
            fn(session_id, *args)
        except EngineUserError as exc:
            self.link.send(P.EngineError(code=exc.code, message=str(exc), session_id=session_id))

    def _update_loads(self) -> None:
        """Rebuild the heartbeat's per-signature view (signatures with open sessions)."""
        counts: dict[str, int] = {}
        for sig in self.signatures.values():
            counts[sig] = counts.get(sig, 0) + 1
        sizes = {sig: size for sig, size in self.sizes.items() if sig in counts}
        self.loads = signature_loads(self.scheduler.learner, sizes, counts, self.chunk_period_s)

    def _learn(self, batch: list[PendingStep], start: float) -> None:
        """Feed the step time and the tightest deadline slack to the batch learner."""
        sigs = {step.signature for step in batch}
        self.mixed_batches += len(sigs) > 1
        slack_s = min(step.request.deadline for step in batch) - start
        self.scheduler.learner.record(batch[0].signature, len(batch), time.time() - start, slack_s)
        self._update_loads()

    def _generate(self, batch: list[PendingStep]) -> None:
        start = time.time()
        self.link.busy_since = start
        works = []
        for step in batch:
            r = step.request
            poses = np.frombuffer(r.poses, dtype=np.float64).reshape(r.num_frames, 4, 4)  # (F, 4, 4)
            keys = np.frombuffer(r.keys, dtype=np.float32).reshape(r.num_frames, 8)  # (F, 8)
            works.append(ChunkWork(session_id=r.session_id, chunk_index=r.chunk_index, poses=poses, keys=keys))
        try:
            outputs = self.engine.generate(works)
        except EngineUserError as exc:  # e.g. a session ran out of positions: that session ends
            self.link.busy_since = None
            culprit = exc.session_id
            for w in works:
                if culprit is None or w.session_id == culprit:
                    self.link.send(P.EngineError(code=exc.code, message=str(exc), session_id=w.session_id))
            rest = [s for s in batch if culprit is not None and s.request.session_id != culprit]
            if rest:  # the others were refused only because they shared the batch: run them now
                self._generate(rest)
            return
        finally:
            self.link.busy_since = None
        for step, out in zip(batch, outputs):
            t_jpeg = time.time()
            jpegs = out.jpegs if out.jpegs is not None else [encode_jpeg(f, self.jpeg_quality) for f in out.frames]
            jpeg_ms = (time.time() - t_jpeg) * 1000
            total_ms = (time.time() - start) * 1000
            self.timer.add(total_ms)
            timings = P.ChunkTimings(total_ms=total_ms, model_ms=out.model_ms, decode_ms=out.decode_ms,
                                     jpeg_ms=jpeg_ms, batch_size=len(batch),
                                     queue_ms=(start - step.arrived_at) * 1000)
            self.link.send(P.ChunkReady(session_id=step.request.session_id, chunk_index=step.request.chunk_index,
                                        num_frames=len(jpegs), timings=timings, frames_left=out.frames_left), *jpegs)
        self._learn(batch, start)

    def _test_frame(self, msg: P.RenderTestFrame) -> None:
        try:
            frame = self.engine.render_test_frame(msg.prompt, msg.seed, msg.width, msg.height)
        except (EngineUserError, ValueError) as exc:
            code = getattr(exc, "code", "bad_field")
            self.link.send(P.TestFrame(request_id=msg.request_id, error=str(exc), code=code))
            return
        self.link.send(P.TestFrame(request_id=msg.request_id), encode_jpeg(frame, self.jpeg_quality))

"""Rank 0's step loop: admit front messages, run chunks first, fit engine tasks into the gaps, reply."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque

import numpy as np

from inference import protocol as P
from inference.engine.base import ChunkWork, EngineTask, EngineUserError, SessionSpec, WorldEngine
from inference.engine.batching import BatchLearner, signature_loads
from inference.engine.frames import decode_image, encode_jpeg
from inference.engine.link import FrontLink
from inference.engine.scheduler import ChunkScheduler, PendingStep
from inference.engine.tasks import OPEN, PROMPT, TEST_FRAME, TaskItem, TaskLimits, TaskQueue, TaskRefused

log = logging.getLogger("engine.loop")

IDLE_WAIT_S = 0.05  # longest wait for a front message when there is nothing to do
TASK_POLL_S = 0.01  # wait between looks for a gap while a task waits
STALE_S = 1.0  # a session that has not asked for a chunk this long after its due time no longer constrains tasks
DEFAULT_CHUNK_S = 0.1  # expected chunk time of a signature never measured
UNIT_PIXELS = 832 * 480  # a test frame this size (or smaller) is one unit of test-frame cost


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


class Deferred(EngineTask):
    """A task made by `make()` at its first slice: building it may already refuse (e.g. an engine that is busy)."""

    def __init__(self, make):
        self.make = make
        self.inner: EngineTask | None = None

    def step(self) -> bool:
        if self.inner is None:
            self.inner = self.make()
        done = self.inner.step()
        if done:
            self.result = self.inner.result
        return done

    def cancel(self) -> None:
        if self.inner is not None:
            self.inner.cancel()


class OpenWorld(EngineTask):
    """Open a session: decode its start image (one slice, when there is one), then the engine's own open task."""

    def __init__(self, engine: WorldEngine, msg: P.OpenSession):
        self.engine, self.msg = engine, msg
        self.inner: EngineTask | None = None
        self.decoded = msg.image is None

    def _spec(self) -> SessionSpec:
        m = self.msg
        image = decode_image(m.image) if m.image else None
        return SessionSpec(session_id=m.session_id, prompt=m.prompt, seed=m.seed, width=m.width,
                           height=m.height, image=image)

    def step(self) -> bool:
        if self.inner is None:
            self.inner = self.engine.open_task(self._spec())
            if not self.decoded:  # the decode was this slice's work
                self.decoded = True
                return False
        done = self.inner.step()
        if done:
            self.result = self.inner.result
        return done

    def cancel(self) -> None:
        if self.inner is not None:
            self.inner.cancel()


class EngineLoop:
    """Runs one engine for the front until Shutdown (or a fatal error)."""

    def __init__(self, engine: WorldEngine, link: FrontLink, *, jpeg_quality: int = 85, max_batch: int = 8,
                 task_limits: TaskLimits | None = None):
        self.engine = engine
        self.link = link
        self.jpeg_quality = jpeg_quality
        self.scheduler = ChunkScheduler(learner=BatchLearner(max_batch=max_batch))
        self.tasks = TaskQueue(task_limits)
        info = engine.info()
        self.fps = info.fps
        self.chunk_period_s = info.chunk_frames / info.fps  # seconds of video one chunk plays
        self.sizes: dict[str, str] = {}  # batching signature -> "W*H" of its sessions
        self.loads: list[dict] = []  # heartbeat view, replaced whole after each step (read by the I/O thread)
        self.task_ms: dict[str, float] = {}  # heartbeat view of the slice cost estimates, replaced whole
        self.mixed_batches = 0
        self.signatures: dict[str, str] = {}  # session_id -> batching signature (open sessions)
        self.next_due: dict[str, float] = {}  # session_id -> predicted playback deadline of its next chunk
        self.penalty_s: dict[str, float] = {}  # session_id -> forced task time its next chunk is ranked later by
        self.lead_s = 0.0
        self.timer = ChunkTimer()
        self.stopping = False

    def heartbeat_fields(self) -> dict:
        """Called on the I/O thread: only reads thread-safe or atomic state."""
        p50, p95 = self.timer.percentiles()
        return {"sessions": len(self.signatures), "queued_steps": len(self.scheduler),
                "chunk_ms_p50": p50, "chunk_ms_p95": p95,
                "ranks": [P.RankHealth(rank=0, alive=True, last_seen_s=0.0, **self.engine.health())],
                "batching": [P.SignatureLoad(**load) for load in self.loads], "mixed_batches": self.mixed_batches,
                "tasks": len(self.tasks), "task_ms": self.task_ms, "lead_ms": round(self.lead_s * 1000, 1)}

    # -- the loop ----------------------------------------------------------

    def run(self) -> None:
        forced_last = False
        while not self.stopping:
            # A task past its longest wait gets one slice even when chunks are due (a saturated engine would
            # otherwise never open a world), but never two in a row while chunks wait.
            late = None if forced_last and len(self.scheduler) else self.tasks.overdue(time.time())
            batch = [] if late is not None else self.scheduler.next_batch()
            if batch:
                self._generate(batch)
                worked, forced_last = True, False
            else:
                worked = self._run_slice(late)
                forced_last = late is not None
            self._drain(0.0 if worked else self._idle_wait())

    def _idle_wait(self) -> float:
        """How long to wait for a front message: short while a task waits for a gap or to be forced."""
        if not len(self.tasks):
            return IDLE_WAIT_S
        return min(TASK_POLL_S, self.tasks.next_overdue_s(time.time()))

    def _drain(self, wait_s: float) -> None:
        """Handle every queued front message (each in constant time); wait up to `wait_s` for the first."""
        try:
            msg = self.link.inbound.get(timeout=wait_s) if wait_s > 0 else self.link.inbound.get_nowait()
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
            if sig is None:  # closed (or not opened yet) while the request was in flight
                log.debug("step for unknown session %s ignored", msg.session_id)
                return
            self.scheduler.submit(PendingStep(request=msg, signature=sig, arrived_at=time.time(),
                                              penalty_s=self.penalty_s.pop(msg.session_id, 0.0)))
        elif isinstance(msg, P.OpenSession):
            self._queue(TaskItem(kind=OPEN, key=msg.session_id, owner=msg.owner or msg.session_id,
                                 task=OpenWorld(self.engine, msg), arrived_at=time.time(), info={"msg": msg}))
        elif isinstance(msg, P.SetPrompt):
            if msg.session_id not in self.signatures:  # closed meanwhile: answered, so nothing waits on it
                self.link.send(P.PromptChanged(session_id=msg.session_id, prompt=msg.prompt, code="bad_field",
                                               error=f"session {msg.session_id} is not open in the engine"))
                return
            task = Deferred(lambda m=msg: self.engine.prompt_task(m.session_id, m.prompt))
            self._queue(TaskItem(kind=PROMPT, key=msg.session_id, owner=msg.session_id, task=task,
                                 arrived_at=time.time(), info={"prompt": msg.prompt}))
        elif isinstance(msg, P.RenderTestFrame):
            task = Deferred(lambda m=msg: self.engine.test_frame_task(m.prompt, m.seed, m.width, m.height))
            self._queue(TaskItem(kind=TEST_FRAME, key=msg.request_id, owner=msg.owner or msg.request_id,
                                 task=task, arrived_at=time.time(),
                                 scale=max(1.0, msg.width * msg.height / UNIT_PIXELS)))
        elif isinstance(msg, P.CancelTestFrame):
            self.tasks.cancel(TEST_FRAME, msg.request_id)
        elif isinstance(msg, P.ResetSession):
            self.scheduler.drop_session(msg.session_id)
            self.next_due.pop(msg.session_id, None)
            if msg.session_id in self.signatures:
                self._session_call(msg.session_id, self.engine.reset)
        elif isinstance(msg, P.CloseSession):
            self._close(msg.session_id)
        elif isinstance(msg, P.Shutdown):
            log.info("shutdown requested")
            self.stopping = True

    def _queue(self, item: TaskItem) -> None:
        try:
            for old in self.tasks.add(item):
                log.info("%s task %s replaced by a newer one of %s", old.kind, old.key, item.owner)
        except TaskRefused as exc:
            self.link.send(P.TestFrame(request_id=item.key, error=str(exc), code="busy"))

    def _close(self, session_id: str) -> None:
        self.tasks.cancel_key(session_id)
        self.penalty_s.pop(session_id, None)
        self.scheduler.drop_session(session_id)
        self.next_due.pop(session_id, None)
        if self.signatures.pop(session_id, None) is not None:
            self.engine.close_session(session_id)
            self._update_loads()

    def _session_call(self, session_id: str, fn, *args) -> None:
        try:
            fn(session_id, *args)
        except EngineUserError as exc:
            self.link.send(P.EngineError(code=exc.code, message=str(exc), session_id=session_id))

    # -- tasks between chunks ------------------------------------------------

    def _chunk_s(self, signature: str) -> float:
        expected = self.scheduler.learner.expected_s(signature, 1)
        return expected if expected is not None else DEFAULT_CHUNK_S

    def slack_s(self, now: float) -> float:
        """Seconds until some chunk must start to meet its playback deadline (inf: nothing streams)."""
        starts = [s.rank_deadline - self._chunk_s(s.signature) for s in self.scheduler.pending.values()]
        for session_id, due in self.next_due.items():
            sig = self.signatures.get(session_id)
            if sig is not None and session_id not in self.scheduler.pending and due > now - STALE_S:
                starts.append(due - self._chunk_s(sig))
        return min(starts) - now if starts else math.inf

    def _run_slice(self, item: TaskItem | None = None) -> bool:
        """Run one slice of `item`, or of the task that fits before the next chunk is due; False when none does."""
        if not len(self.tasks):
            return False
        now = time.time()
        slack = self.slack_s(now)
        item = item or self.tasks.pick(now, slack)
        if item is None:
            return False
        forced = not self.tasks.fits(item, slack)  # it may make a chunk late: its own world pays
        start = time.perf_counter()
        self.link.busy_since = now
        try:
            finished = item.task.step()
        except (EngineUserError, ValueError) as exc:
            self.tasks.failed(item)
            self._task_failed(item, exc)
            return True
        finally:
            self.link.busy_since = None
        seconds = time.perf_counter() - start
        self.tasks.ran(item, seconds, finished)
        if forced:
            self._charge(item, seconds)
        self.task_ms = {kind: round(s * 1000, 1) for kind, s in self.tasks.costs.items()}
        if finished:
            self._task_done(item)
        return True

    def _charge(self, item: TaskItem, seconds: float) -> None:
        """A slice that ran although chunks were due: the world it is for (or replaces) ranks its next chunk later."""
        payer = item.key if item.kind == PROMPT else item.info["msg"].replaces if item.kind == OPEN else ""
        if payer not in self.signatures:
            return  # a first open or a test frame: nobody's own stream to charge, everyone shares it
        pending = self.scheduler.pending.get(payer)
        if pending is not None:
            pending.penalty_s += seconds
        else:
            self.penalty_s[payer] = self.penalty_s.get(payer, 0.0) + seconds

    def _task_done(self, item: TaskItem) -> None:
        if item.kind == OPEN:
            msg: P.OpenSession = item.info["msg"]
            sig = item.task.result
            if msg.session_id in self.signatures:  # opened again (engine restart of the front's view): replace
                self.engine.close_session(msg.session_id)
            self.signatures[msg.session_id] = sig
            self.sizes[sig] = f"{msg.width}*{msg.height}"
            self.next_due[msg.session_id] = time.time()  # its first chunk request is on its way
            self._update_loads()
            self.link.send(P.SessionOpened(session_id=msg.session_id, prompt=msg.prompt,
                                           width=msg.width, height=msg.height, signature=sig))
        elif item.kind == PROMPT:
            self.link.send(P.PromptChanged(session_id=item.key, prompt=item.info["prompt"]))
        else:
            frame = item.task.result
            jpeg = frame if isinstance(frame, bytes) else encode_jpeg(frame, self.jpeg_quality)
            self.link.send(P.TestFrame(request_id=item.key), jpeg)

    def _task_failed(self, item: TaskItem, exc: Exception) -> None:
        code = getattr(exc, "code", "bad_field")
        if item.kind == OPEN:
            self.link.send(P.EngineError(code=code, message=str(exc), session_id=item.key))
        elif item.kind == PROMPT:
            self.link.send(P.PromptChanged(session_id=item.key, prompt=item.info["prompt"], error=str(exc),
                                           code=code))
        else:
            self.link.send(P.TestFrame(request_id=item.key, error=str(exc), code=code))

    # -- chunks --------------------------------------------------------------

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
        encoded = [self._encode(out) for out in outputs]
        done = time.time()
        for step in batch:  # each session's next chunk is due once these frames have played
            r = step.request
            self.next_due[r.session_id] = max(r.deadline, done) + r.num_frames / self.fps
        # Asked with the slack the next task slice will see: a waiting task that does not fit opens a gap.
        self.lead_s = self.tasks.wanted_lead(done, self.slack_s(done)) if len(self.tasks) else 0.0
        for step, out, (jpegs, jpeg_ms) in zip(batch, outputs, encoded):
            self._reply_chunk(step, out, jpegs, jpeg_ms, start, len(batch))
        self._learn(batch, start)

    def _encode(self, out) -> tuple[list[bytes], float]:
        """The chunk's JPEGs (the engine's own when it encoded them) and the milliseconds spent here."""
        if out.jpegs is not None:
            return out.jpegs, 0.0
        t_jpeg = time.time()
        jpegs = [encode_jpeg(f, self.jpeg_quality) for f in out.frames]
        return jpegs, (time.time() - t_jpeg) * 1000

    def _reply_chunk(self, step: PendingStep, out, jpegs: list[bytes], jpeg_ms: float, start: float,
                     batch_size: int) -> None:
        total_ms = (time.time() - start) * 1000
        self.timer.add(total_ms)
        timings = P.ChunkTimings(total_ms=total_ms, model_ms=out.model_ms, decode_ms=out.decode_ms,
                                 jpeg_ms=jpeg_ms, batch_size=batch_size, queue_ms=(start - step.arrived_at) * 1000)
        self.link.send(P.ChunkReady(session_id=step.request.session_id, chunk_index=step.request.chunk_index,
                                    num_frames=len(jpegs), timings=timings, lead_s=self.lead_s,
                                    frames_left=out.frames_left), *jpegs)

"""Aggregate and per-session fps of N concurrent tiny lingbot-fast sessions: learned batching vs one at a time.

    python -m bench.sessions [--sessions 1,2,4,8] [--chunks 6] [--size 48*32]

Drives the engine in-process (no server): every session always has its next
chunk pending and is starving (deadline = request time, what the front sends
when a session's buffer is empty), the regime where batching matters. The
real ChunkScheduler picks batches by deadline and the real BatchLearner learns
the limit (`batched`), or the limit is pinned to 1 (`sequential`). Each session walks
and turns with its own key pattern, so poses differ per session. Before the
measurement the learner gets warm-up steps to find its limit; the table
reports the measured steps only. Wall times are noisy on a shared CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from inference.controls import CameraRig
from inference.engine.base import ChunkWork, SessionSpec
from inference.engine.batching import BatchLearner
from inference.engine.scheduler import ChunkScheduler, PendingStep
from inference.lingbot.engine import LingbotFastEngine
from inference.protocol import StepChunk
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint

PROMPTS = ("green hills", "a beach at sunset", "snowy forest", "desert canyon", "city street at night",
           "misty lake", "autumn park", "rocky coast")


def key_pattern(session: int, start: int, frames: int) -> np.ndarray:
    """(frames, 8) held fractions: walk forward (w) and turn left/right (j/l) in a per-session rhythm."""
    keys = np.zeros((frames, 8), np.float32)
    t = start + np.arange(frames)
    keys[:, 0] = 1.0
    turn = np.sin(2 * np.pi * t / (24 + 6 * session) + session)
    keys[:, 5] = np.clip(turn, 0, 1)  # j
    keys[:, 7] = np.clip(-turn, 0, 1)  # l
    return keys


class BenchSession:
    """One simulated client: its camera rig, frames produced so far and playback clock."""

    def __init__(self, index: int, session_id: str):
        self.index, self.session_id = index, session_id
        self.rig = CameraRig()
        self.frames = 0
        self.chunks = 0

    def request(self, engine: LingbotFastEngine) -> PendingStep:
        n = engine.sessions[self.session_id].expected_frames()
        keys = key_pattern(self.index, self.frames, n)
        if self.chunks == 0:
            keys[0] = 0.0
        poses = self.rig.advance(keys)
        now = time.time()
        req = StepChunk(session_id=self.session_id, chunk_index=self.chunks, num_frames=n, deadline=now,
                        poses=np.ascontiguousarray(poses, np.float64).tobytes(), keys=keys.tobytes(),
                        requested_at=now)
        return PendingStep(request=req, signature="", arrived_at=now)


def run(engine: LingbotFastEngine, count: int, size: tuple[int, int], *, max_batch: int, chunks: int,
        warmup_steps: int) -> dict:
    """Saturate `count` sessions; returns frames/s over the measured steps and the batch sizes used."""
    learner = BatchLearner(max_batch=max_batch, min_samples=1, probe_every=4)
    scheduler = ChunkScheduler(learner=learner)
    sessions = {}
    for i in range(count):
        sid = f"bench{max_batch}_{count}_{i}"
        sig = engine.open_session(SessionSpec(session_id=sid, prompt=PROMPTS[i % len(PROMPTS)], seed=i,
                                              width=size[0], height=size[1]))
        sessions[sid] = BenchSession(i, sid)
    for s in sessions.values():
        step = s.request(engine)
        step.signature = sig
        scheduler.submit(step)
    steps, frames, sizes, measured_s = 0, 0, [], 0.0
    target = warmup_steps + chunks * count  # measured chunks: `chunks` per session when one at a time
    while steps < target:
        batch = scheduler.next_batch()
        start = time.time()
        works = [ChunkWork(session_id=b.request.session_id, chunk_index=b.request.chunk_index,
                           poses=np.frombuffer(b.request.poses).reshape(-1, 4, 4),
                           keys=np.frombuffer(b.request.keys, np.float32).reshape(-1, 8)) for b in batch]
        outputs = engine.generate(works)
        seconds = time.time() - start
        learner.record(sig, len(batch), seconds, min(b.request.deadline for b in batch) - start)
        steps += 1
        if steps > warmup_steps:
            measured_s += seconds
            frames += sum(len(o.frames) for o in outputs)
            sizes.append(len(batch))
        for b, out in zip(batch, outputs):
            s = sessions[b.request.session_id]
            s.frames += len(out.frames)
            s.chunks += 1
            step = s.request(engine)
            step.signature = sig
            scheduler.submit(step)
        if steps > warmup_steps and len(sizes) * np.mean(sizes) >= chunks * count:
            break
    for sid in sessions:
        engine.close_session(sid)
    fps = frames / measured_s if measured_s else 0.0
    return {"fps": fps, "per_session": fps / count, "mean_batch": float(np.mean(sizes)),
            "limit": learner.limit(sig), "step_ms": learner.snapshot(sig)["step_ms"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", default="1,2,4,8", help="concurrent session counts, comma separated")
    ap.add_argument("--chunks", type=int, default=6, help="measured chunks per session")
    ap.add_argument("--size", default="48*32", help="session size (a tiny checkpoint size)")
    ap.add_argument("--max-batch", type=int, default=8, help="ceiling of the learned limit in the batched run")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.sessions.split(",")]
    w, h = (int(v) for v in args.size.split("*"))
    with tempfile.TemporaryDirectory() as tmp:
        engine = LingbotFastEngine.from_model_dir(make_tiny_checkpoint(Path(tmp) / "lingbot-tiny", seed=3))
        engine.warm_up()
        print(f"tiny lingbot-fast, {args.size}, {engine.info().device}; frames/s of engine time, "
              f"saturated sessions, {args.chunks} measured chunks per session")
        print(f"{'sessions':>8} | {'batched fps':>11} {'per session':>11} {'limit':>5} {'mean batch':>10} | "
              f"{'sequential fps':>14} {'per session':>11} | {'ratio':>5}")
        for count in counts:
            batched = run(engine, count, (w, h), max_batch=args.max_batch, chunks=args.chunks,
                          warmup_steps=3 * count + 2 if count > 1 else 1)
            single = run(engine, count, (w, h), max_batch=1, chunks=args.chunks, warmup_steps=1)
            ratio = batched["fps"] / single["fps"] if single["fps"] else float("nan")
            print(f"{count:>8} | {batched['fps']:>11.2f} {batched['per_session']:>11.2f} {batched['limit']:>5} "
                  f"{batched['mean_batch']:>10.2f} | {single['fps']:>14.2f} {single['per_session']:>11.2f} | "
                  f"{ratio:>5.2f}", flush=True)
            print(f"{'':>8}   batched step ms by size: {batched['step_ms']}", flush=True)


if __name__ == "__main__":
    main()

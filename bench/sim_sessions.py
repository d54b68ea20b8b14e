"""Aggregate sim frames per second for N sessions at 832x480: in-process vs render workers, one run.

    python bench/sim_sessions.py [--sessions 1,2,4] [--seconds 6] [--workers N]

Drives SimEngine.generate the way the engine loop does, with every session
always due (the engine's capacity, not the 16 fps pacing): `batched` asks for
one chunk of every session per call (the loop batches same-size sessions),
`one-by-one` for one session per call. In-process frames are JPEG-encoded here
as the loop would (quality 85); with workers they come back encoded. Each
session walks and turns along its own path. Prints frames per second per
configuration and the workers / in-process ratio measured in this run; wall
times on a shared CPU are noisy, so the modes alternate in short rounds. The
CPU milliseconds per frame count this process and the render workers: on idle
cores the capacity is about cores * 1000 / that. load1 is the 1-minute load
average when the row was printed: other work on the machine lowers the fps. Last, the main-thread CPU time
of each step() of an open_task for a new seed (the engine loop's worst case).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sim_render import trajectory  # noqa: E402
from inference.engine.base import ChunkWork, SessionSpec  # noqa: E402
from inference.engine.frames import encode_jpeg  # noqa: E402
from inference.sim import SimEngine  # noqa: E402
from inference.sim.engine import default_workers  # noqa: E402

CHUNK = 4
PROMPTS = ("green hills at sunset", "snowy forest", "misty lake at dawn", "desert canyon")


class Run:
    """One engine with `sessions` open, each at its own place on its own path."""

    def __init__(self, workers: int, sessions: int):
        self.engine = SimEngine(chunk_frames=CHUNK, workers=workers)
        self.engine.warm_up()
        self.paths = {}
        for i in range(sessions):
            sid = f"s{i}"
            self.engine.open_session(SessionSpec(session_id=sid, prompt=PROMPTS[i % len(PROMPTS)], seed=i + 1,
                                                 width=832, height=480))
            self.paths[sid] = trajectory(512)
            self.paths[sid][:, 0, 3] += 3.0 * i  # (F, 4, 4): sessions stand apart
        self.chunk = 0

    def works(self) -> list[ChunkWork]:
        start = (self.chunk * CHUNK) % (512 - CHUNK)
        self.chunk += 1
        return [ChunkWork(session_id=sid, chunk_index=self.chunk, poses=p[start:start + CHUNK],
                          keys=np.zeros((CHUNK, 8), np.float32)) for sid, p in self.paths.items()]

    def step(self, batched: bool) -> int:
        """Generate one chunk of every session; frames made."""
        works = self.works()
        calls = [works] if batched else [[w] for w in works]
        frames = 0
        for call in calls:
            for out in self.engine.generate(call):
                jpegs = out.jpegs if out.jpegs is not None else [encode_jpeg(f, 85) for f in out.frames]
                frames += len(jpegs)
        return frames

    def close(self) -> None:
        self.engine.close()


def cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by this process and the given (worker) processes."""
    total = time.process_time()
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(runs: dict[str, Run], batched: bool, seconds: float, rounds: int = 3) -> dict[str, tuple]:
    """(frames per second, CPU ms per frame) of each run, alternating runs in `rounds` slices of the time."""
    frames = dict.fromkeys(runs, 0)
    wall = dict.fromkeys(runs, 0.0)
    cpu = dict.fromkeys(runs, 0.0)
    for name, run in runs.items():
        run.step(batched)  # the ray grids of this path's pitches, scene mappings
    for _ in range(rounds):
        for name, run in runs.items():
            end = time.perf_counter() + seconds / rounds
            t0, c0 = time.perf_counter(), cpu_s(run.engine.worker_pids)
            while time.perf_counter() < end:
                frames[name] += run.step(batched)
            wall[name] += time.perf_counter() - t0
            cpu[name] += cpu_s(run.engine.worker_pids) - c0
    return {name: (frames[name] / wall[name], 1e3 * cpu[name] / frames[name]) for name in runs}


def open_steps(workers: int, seed: int) -> tuple[int, float, float]:
    """(steps, median ms, max ms) of main-thread CPU per step of an open_task for a new seed."""
    engine = SimEngine(chunk_frames=CHUNK, workers=workers)
    engine.warm_up()
    task = engine.open_task(SessionSpec(session_id="o", prompt="sunset", seed=seed, width=832, height=480))
    times = []
    while True:
        t0 = time.thread_time()
        done = task.step()
        times.append(1e3 * (time.thread_time() - t0))
        if done:
            break
        time.sleep(0.005)  # the loop would generate chunks here
    engine.close()
    return len(times), float(np.median(times)), max(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", default="1,2,4")
    ap.add_argument("--seconds", type=float, default=6.0, help="per configuration and mode")
    ap.add_argument("--workers", type=int, default=default_workers())
    args = ap.parse_args()
    print(f"{default_workers()} CPUs, {args.workers} render workers, 832x480, {CHUNK}-frame chunks")
    print(" N  calls        in-process fps (cpu ms/frame)  workers fps (cpu ms/frame)  ratio  per-session fps"
          "  load1")
    for n in (int(x) for x in args.sessions.split(",")):
        runs = {"local": Run(0, n), "pool": Run(args.workers, n)}
        try:
            for batched in (False, True):
                m = measure(runs, batched, args.seconds)
                (lf, lc), (pf, pc) = m["local"], m["pool"]
                print(f"{n:2d}  {'batched' if batched else 'one-by-one':11}  {lf:14.1f} ({lc:5.1f})"
                      f"{pf:20.1f} ({pc:5.1f})  {pf / lf:10.2f}  {pf / n:8.1f}  {os.getloadavg()[0]:15.2f}")
        finally:
            for run in runs.values():
                run.close()
    for workers, seed in ((0, 901), (args.workers, 902)):
        steps, med, worst = open_steps(workers, seed)
        print(f"open_task for a new seed, {workers} workers: {steps} steps, main-thread CPU per step "
              f"median {med:.1f} ms, max {worst:.1f} ms")


if __name__ == "__main__":
    main()

"""Where a lingbot-fast chunk's time goes (DiT / VAE encode / VAE decode / JPEG), per chunk index, and batching.

    python bench/lingbot_chunk.py [--model-dir DIR] [--size 64*48] [--chunks 12] [--batches 1,2,4]

Without --model-dir a tiny random checkpoint is written to a temporary
folder (inference.tools.make_tiny_checkpoint). Prints one run's numbers and
ratios; on a shared CPU expect noise of tens of percent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.engine.base import SessionSpec  # noqa: E402
from inference.engine.frames import encode_jpeg  # noqa: E402
from inference.lingbot.engine import LingbotFastEngine  # noqa: E402
from inference.lingbot.pipeline import ChunkRequest  # noqa: E402
from inference.tools.engine_probe import walk  # noqa: E402
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402


def chunk_request(engine: LingbotFastEngine, session_id: str, step: int) -> ChunkRequest:
    """The next chunk of a session walking forward (W held) at 0.05 per frame."""
    session = engine.sessions[session_id]
    done = 0 if session.chunks == 0 else 9 + 12 * (session.chunks - 1)
    poses, keys = walk(session.expected_frames(), done)
    return ChunkRequest(session=session, poses=poses, keys=keys)


def run(engine: LingbotFastEngine, session_ids: list[str]):
    requests = [chunk_request(engine, sid, 0) for sid in session_ids]
    return engine.pipeline.run(engine.pool_of(session_ids[0]).cache, requests)


def open_sessions(engine: LingbotFastEngine, prefix: str, count: int, width: int, height: int) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(count)]
    for i, sid in enumerate(ids):
        engine.open_session(SessionSpec(session_id=sid, prompt=f"green hills {i}", seed=i, width=width, height=height))
    return ids


def per_chunk_index(engine: LingbotFastEngine, width: int, height: int, chunks: int) -> None:
    (sid,) = open_sessions(engine, "timeline", 1, width, height)
    kv = engine.pool_of(sid).cache.self_kv
    print(f"\n== one session, {chunks} chunks, window {engine.window} / sink {engine.sink} latent frames ==")
    print("chunk  frames  dit_ms  encode_ms  decode_ms  jpeg_ms  total_ms  kv_tokens")
    dit = []
    for c in range(chunks):
        t0 = time.perf_counter()
        (result,) = run(engine, [sid])
        t1 = time.perf_counter()
        jpegs = [encode_jpeg(f, 85) for f in result.frames]
        jpeg_ms = (time.perf_counter() - t1) * 1000
        total = (t1 - t0) * 1000 + jpeg_ms
        dit.append(result.dit_ms)
        print(f"{c:5d}  {len(jpegs):6d}  {result.dit_ms:6.1f}  {result.condition_ms:9.1f}  {result.decode_ms:9.1f}  "
              f"{jpeg_ms:7.1f}  {total:8.1f}  {kv.local_end[engine.sessions[sid].slot]:9d}")
    full = engine.window // 3  # chunks until the window is full
    if chunks > full + 2:
        early, late = statistics.median(dit[1:full]), statistics.median(dit[full + 1:])
        print(f"DiT median, chunks 1..{full - 1} (window filling): {early:.1f} ms; chunks {full + 1}.. (full): "
              f"{late:.1f} ms; ratio full/filling {late / early:.2f}")
        print(f"DiT chunk {chunks - 1} / chunk {full + 1}: {dit[-1] / dit[full + 1]:.2f} (flat in window mode ~1)")
    engine.close_session(sid)


def batching(engine: LingbotFastEngine, width: int, height: int, batches: list[int], repeats: int = 3) -> None:
    print("\n== batched vs sequential DiT time for one chunk (sessions at chunk index 1) ==")
    print("sessions  batched_dit_ms  sequential_dit_ms  sequential/batched")
    for count in batches:
        together = open_sessions(engine, f"b{count}_", count, width, height)
        alone = open_sessions(engine, f"s{count}_", count, width, height)
        run(engine, together)
        for sid in alone:
            run(engine, [sid])
        batched, sequential = [], []
        for _ in range(repeats):
            batched.append(run(engine, together)[0].dit_ms)
            sequential.append(sum(run(engine, [sid])[0].dit_ms for sid in alone))
        b, s = statistics.median(batched), statistics.median(sequential)
        print(f"{count:8d}  {b:14.1f}  {s:17.1f}  {s / b:18.2f}")
        for sid in together + alone:
            engine.close_session(sid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="", help="checkpoint folder (default: a fresh tiny one)")
    ap.add_argument("--size", default="", help="W*H (default: the checkpoint's default size)")
    ap.add_argument("--chunks", type=int, default=12)
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--sink", type=int, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or make_tiny_checkpoint(Path(tmp) / "lingbot-tiny")
        t0 = time.perf_counter()
        engine = LingbotFastEngine.from_model_dir(model_dir, window=args.window, sink=args.sink)
        load_s = time.perf_counter() - t0
        size = args.size or engine.info().default_size
        width, height = (int(v) for v in size.split("*"))
        t0 = time.perf_counter()
        engine.warm_up()
        print(f"model {engine.info().model}\ndevice {engine.device}, torch threads {torch.get_num_threads()}, "
              f"size {size}; load {load_s:.2f} s, warm-up {time.perf_counter() - t0:.2f} s")
        per_chunk_index(engine, width, height, args.chunks)
        batching(engine, width, height, [int(b) for b in args.batches.split(",") if b])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Engine process entry: `python -m inference.engine --engine sim --endpoint tcp://127.0.0.1:PORT`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback

from inference import protocol as P
from inference.engine.link import FrontLink
from inference.engine.loop import EngineLoop
from inference.engine.registry import make_engine

log = logging.getLogger("engine")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m inference.engine", description=__doc__)
    ap.add_argument("--engine", default="sim", choices=["sim", "lingbot-fast"])
    ap.add_argument("--endpoint", required=True, help="ZeroMQ endpoint the front listens on")
    ap.add_argument("--chunk-frames", type=int, default=4, help="sim: video frames per chunk")
    ap.add_argument("--model-dir", default="", help="lingbot-fast: checkpoint folder")
    ap.add_argument("--jpeg-quality", type=int, default=85)
    ap.add_argument("--max-batch", type=int, default=8,
                    help="ceiling of the learned same-signature batch limit (1 = one session per step)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s [engine %(process)d] %(name)s: %(message)s")
    link = FrontLink(args.endpoint)
    loop_holder: list[EngineLoop] = []
    link.status = lambda: loop_holder[0].heartbeat_fields() if loop_holder else {"sessions": 0, "queued_steps": 0}
    link.start()
    # SIGTERM from the front: finish the current step, then leave through the normal path.
    signal.signal(signal.SIGTERM, lambda *_: link.inbound.put(P.Shutdown()))
    try:
        t0 = time.time()
        link.send(P.EngineProgress(stage="loading", detail=f"building engine {args.engine}"))
        engine = make_engine(args.engine, chunk_frames=args.chunk_frames, model_dir=args.model_dir)
        link.send(P.EngineProgress(stage="warming", detail="warm-up"))
        engine.warm_up()
        info = engine.info()
        loop = EngineLoop(engine, link, jpeg_quality=args.jpeg_quality, max_batch=args.max_batch)
        loop_holder.append(loop)
        link.send(P.EngineReady(engine=info.name, model=info.model, world_size=info.world_size, device=info.device,
                                sizes=list(info.sizes), default_size=info.default_size, fps=info.fps,
                                first_chunk_frames=info.first_chunk_frames, chunk_frames=info.chunk_frames,
                                max_latent_frames=info.max_latent_frames, pid=os.getpid()))
        log.info("engine %s ready on %s in %.2f s", info.name, info.device, time.time() - t0)
        loop.run()
        engine.close()
        link.close()
        return 0
    except Exception as exc:  # anything unexpected is fatal: tell the front, exit non-zero, get restarted
        log.error("engine failed: %s\n%s", exc, traceback.format_exc())
        link.send(P.EngineError(code="engine_failed", message=f"{type(exc).__name__}: {exc}", fatal=True))
        link.close()
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Engine process entry: `python -m inference.engine --engine sim --endpoint tcp://127.0.0.1:PORT`.

Under torchrun (WORLD_SIZE > 1) rank 0 talks to the front and the other
ranks follow it (inference/engine/group.py).
"""

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
from inference.engine.tasks import TaskLimits

log = logging.getLogger("engine")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m inference.engine", description=__doc__)
    ap.add_argument("--engine", default="sim", choices=["sim", "lingbot-fast"])
    ap.add_argument("--endpoint", required=True, help="ZeroMQ endpoint the front listens on")
    ap.add_argument("--front-pid", type=int, default=0,
                    help="exit when this process (the front) is gone, even when torchrun sits in between")
    ap.add_argument("--chunk-frames", type=int, default=4, help="sim: video frames per chunk")
    ap.add_argument("--sim-workers", type=int, default=None,
                    help="sim: render worker processes (default: one per CPU; 0 or 1: render in-process)")
    ap.add_argument("--model-dir", default="", help="lingbot-fast: checkpoint folder")
    ap.add_argument("--jpeg-quality", type=int, default=85)
    ap.add_argument("--kv-window", type=int, default=None,
                    help="lingbot-fast: latent frames the KV cache keeps (default: the checkpoint's, else 12); "
                         "-1 keeps every frame (global attention), which ends sessions at the RoPE table's end")
    ap.add_argument("--kv-sink", type=int, default=None, help="lingbot-fast: first latent frames never evicted")
    ap.add_argument("--rope-frames", type=int, default=None,
                    help="lingbot-fast: latent frame positions of the RoPE table (default 1024, the reference's); "
                         "window sessions re-anchor there, global ones end there")
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                    help="lingbot-fast: weights/activations dtype (default: bfloat16 on GPU, float32 on CPU)")
    ap.add_argument("--weights", choices=["bf16", "fp8"], default="bf16",
                    help="lingbot-fast: DiT block linears as float8 e4m3 with per-channel scales (fp8: half the "
                         "weight memory; FP8 matmuls on GPUs of compute capability >= 8.9)")
    ap.add_argument("--t5-device", choices=["cuda", "cpu"], default=None,
                    help="lingbot-fast: where the umT5 text encoder lives (default: with the DiT; cpu frees "
                         "~10.6 GiB of GPU memory, prompt changes take seconds)")
    ap.add_argument("--memory-limit-gb", type=float, default=None,
                    help="lingbot-fast: refuse sessions and test frames ('busy') whose planned peak memory per "
                         "rank would pass this many GiB (the measured free memory is always checked)")
    ap.add_argument("--compile", nargs="?", const="default", default=False, choices=["default", "max-autotune"],
                    help="lingbot-fast: run the DiT step under torch.compile (one graph per batch size and session "
                         "size, compiled on its first chunk; on the CPU the weights are frozen into it). "
                         "max-autotune also times Inductor's GEMM kernels per shape and keeps the fastest (a much "
                         "longer compile). bench/dit_efficiency.py measures what each gains")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="lingbot-fast: replay the DiT step from CUDA graphs (CUDA only, KV window only; one graph "
                         "per batch size and session size, captured on its first chunk)")
    ap.add_argument("--max-batch", type=int, default=8,
                    help="ceiling of the learned same-signature batch limit (1 = one session per step)")
    ap.add_argument("--max-test-frames", type=int, default=2,
                    help="test frames waiting or rendering in the engine at once; more are refused as busy")
    ap.add_argument("--collective-timeout-s", type=float, default=30.0,
                    help="torchrun group: seconds before a silent rank fails the group")
    ap.add_argument("--load-timeout-s", type=float, default=1800.0,
                    help="torchrun group: how long ranks wait for each other to finish loading the model")
    ap.add_argument("--first-chunk-timeout-s", type=float, default=600.0,
                    help="torchrun group: how long ranks wait for each other after warm-up and after the first "
                         "chunk of a new size (rank 0's first VAE decode there may be slow)")
    # the parallel layout (ParallelOptions); plain flags so the sim engine never imports torch
    ap.add_argument("--ulysses-size", type=int, default=None, help="torchrun group: ranks splitting each chunk")
    ap.add_argument("--dit-fsdp", action="store_true", help="torchrun group: shard DiT block weights (FSDP2)")
    ap.add_argument("--t5-fsdp", action="store_true", help="torchrun group: shard T5 block weights (FSDP2)")
    return ap.parse_args(argv)


def build_engine(args: argparse.Namespace, ctx):
    """The engine of this rank; in a group the lingbot models get the parallel layout of the flags.

    Only rank 0 of a group decodes frames: the followers' lingbot engines
    skip the VAE decode (their frames would be thrown away).
    """
    options: dict = {}
    if args.engine == "sim":
        options = {"workers": args.sim_workers, "jpeg_quality": args.jpeg_quality}
    if args.engine == "lingbot-fast":
        if args.weights == "fp8" and args.dit_fsdp:
            raise ValueError("--weights fp8 with --dit-fsdp: fp8 DiT weights are not sharded; drop one of them")
        if args.t5_device == "cpu" and args.t5_fsdp:
            raise ValueError("--t5-device cpu with --t5-fsdp: a text encoder on the CPU cannot be sharded over GPUs")
        options = {"window": args.kv_window, "sink": args.kv_sink, "rope_frames": args.rope_frames,
                   "dtype": args.dtype, "weights": args.weights,
                   "t5_device": args.t5_device, "memory_limit_gb": args.memory_limit_gb,
                   "max_batch": args.max_batch, "compile": args.compile, "cuda_graphs": args.cuda_graphs}
    if ctx is not None and ctx.distributed and args.engine == "lingbot-fast":
        from inference.distributed.options import ParallelOptions

        layout = ParallelOptions.from_args(args)

        def prepare(models) -> None:
            layout.apply_dit(models.dit, ctx)
            layout.apply_t5(models.text.model, ctx)

        options.update(device=ctx.device, prepare=prepare, decode=ctx.is_leader,  # only rank 0 makes frames
                       rank=ctx.rank, agree=ctx.all_gather_object)  # every rank admits, all agree
    return make_engine(args.engine, chunk_frames=args.chunk_frames, model_dir=args.model_dir, options=options)


def join_group(args: argparse.Namespace):
    """This rank's ParallelContext from the torchrun environment (imports torch)."""
    from inference.distributed.context import ParallelContext

    return ParallelContext.from_env(ulysses_size=args.ulysses_size, timeout_s=args.collective_timeout_s)


def follower_main(args: argparse.Namespace, ctx) -> int:
    """A rank other than 0: build and warm the same engine, then replay rank 0's calls until shutdown."""
    from inference.engine.group import follow

    try:
        engine = build_engine(args, ctx)
        ctx.barrier(args.load_timeout_s)  # loading speeds differ; the first model collective has a short timeout
        engine.warm_up()
        ctx.barrier(args.first_chunk_timeout_s)  # rank 0 also decoded (first cuDNN calls): wait for it
        follow(engine, ctx)
        engine.close()
        ctx.shutdown()
        return 0
    except Exception as exc:  # the group cannot go on without this rank: exit non-zero, torchrun ends the group
        log.error("rank %d failed: %s\n%s", ctx.rank, exc, traceback.format_exc())
        return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s [engine %(process)d] %(name)s: %(message)s")
    ctx = None  # one process: no torch.distributed at all
    grouped = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if grouped and int(os.environ["RANK"]) != 0:
        return follower_main(args, join_group(args))
    link = FrontLink(args.endpoint, front_pid=args.front_pid)  # heartbeats start before the (slow) torch import and rendezvous
    loop_holder: list[EngineLoop] = []
    link.status = lambda: loop_holder[0].heartbeat_fields() if loop_holder else {"sessions": 0, "queued_steps": 0}
    link.start()
    # SIGTERM from the front: finish the current step, then leave through the normal path.
    signal.signal(signal.SIGTERM, lambda *_: link.inbound.put(P.Shutdown()))
    try:
        t0 = time.time()
        if grouped:
            link.send(P.EngineProgress(stage="loading", detail="joining the torchrun group"))
            ctx = join_group(args)
        link.send(P.EngineProgress(stage="loading", detail=f"building engine {args.engine}"))
        engine = build_engine(args, ctx)
        if ctx is not None:
            link.send(P.EngineProgress(stage="loading", detail="waiting for every rank to load"))
            ctx.barrier(args.load_timeout_s)
        link.send(P.EngineProgress(stage="warming", detail="warm-up"))
        engine.warm_up()
        loop_type = EngineLoop
        if ctx is not None:
            from inference.engine.group import GroupLoop, LeaderEngine

            ctx.barrier(args.first_chunk_timeout_s)  # the followers skipped the decode and wait here
            engine = LeaderEngine(engine, ctx, first_chunk_timeout_s=args.first_chunk_timeout_s)
            loop_type = GroupLoop
            engine.tick()  # every rank answered once before the front hears "ready"
        info = engine.info()
        loop = loop_type(engine, link, jpeg_quality=args.jpeg_quality, max_batch=args.max_batch,
                         task_limits=TaskLimits(max_test_frames=args.max_test_frames))
        loop_holder.append(loop)
        link.send(P.EngineReady(engine=info.name, model=info.model, world_size=info.world_size, device=info.device,
                                sizes=list(info.sizes), default_size=info.default_size, fps=info.fps,
                                first_chunk_frames=info.first_chunk_frames, chunk_frames=info.chunk_frames,
                                max_latent_frames=info.max_latent_frames, pid=os.getpid()))
        log.info("engine %s ready on %s in %.2f s", info.name, info.device, time.time() - t0)
        loop.run()
        engine.close()
        link.close()
        if ctx is not None:
            ctx.shutdown()
        return 0
    except Exception as exc:  # anything unexpected is fatal: tell the front, exit non-zero, get restarted
        log.error("engine failed: %s\n%s", exc, traceback.format_exc())
        link.send(P.EngineError(code="engine_failed", message=f"{type(exc).__name__}: {exc}", fatal=True))
        link.close()
        return 1


if __name__ == "__main__":
    sys.exit(main())

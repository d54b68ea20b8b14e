"""The one prepared GPU check: every GPU-only path of the project in one command, one table, one JSON file.

    python -m bench.gpu_check                  # on a GPU machine (about 3-5 min on one H100/H200)
    python -m bench.gpu_check --dry-run        # the same stages, small shapes, float32 on the CPU (the tests run it)
    python -m bench.gpu_check --only dit_bf16 --only memory_plan

Stages (each runs even when an earlier one failed; a failure is marked and
the run goes on; the exit status is 1 when any stage failed):

  env               device, torch/CUDA/cuDNN, flash-attn builds, the attention backend the DiT gets
  conformance_fp32  the shared fixture's DiT calls, free-running rollout and VAE decode on the device,
  conformance_bf16  against the float32 tolerances, and bf16 against relative-error bounds
  attention         FA3 (sm_90 only) / FA2 / SDPA on the real window shape vs a float32 reference, masked SDPA
  dit_bf16          real A14B-fast shape at --size with --layers blocks, scaled to 40: ms/chunk, TFLOP/s, % peak
  dit_fp8           the same with fp8 weights (FP8 matmul on sm_89+), speed against bf16
  dit_graphs        --cuda-graphs against eager on that shape: equal calls, no host sync in a chunk, ms/chunk
  vae               real Wan2.1 VAE shape: ms per steady decode (float32 and bf16), decode/encode peak memory
  memory_plan       the memory plan against the measured peaks of the stages above (fails if it under-plans)
  server            a tiny-checkpoint server end to end on the device: JPEG frames, /status memory, /test-frame
  nccl_2rank        with 2+ GPUs (or --ranks 2): the fixture's DiT calls on 2 torchrun ranks, Ulysses + FSDP2

Writes artifacts/gpu_check-<time>.json (every stage's figures) and prints one table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_serve_stages import server_end_to_end, two_rank_conformance  # noqa: E402
from bench.gpu_step_stage import dit_graphs  # noqa: E402
from bench.gpu_stages import (CheckRun, StageFailed, StageSkipped, attention_backends, conformance,  # noqa: E402
                              dit_chunk, memory_plan_vs_measured, vae_chunk)
from inference.models.attention import _import_errors, backend_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# the shared cam set: $FIXTURES_DIR/lingbot_fast_tiny, else ../shared/fixtures beside the repo (as the tests look)
FIXTURE = Path(os.environ.get("FIXTURES_DIR") or Path(__file__).resolve().parents[2] / "shared" / "fixtures") \
    / "lingbot_fast_tiny"


class StageTimeout(Exception):
    """A stage ran past its share of the time budget."""


def environment(run: CheckRun) -> dict:
    figures = {"device": str(run.device), "torch": torch.__version__, "cuda": torch.version.cuda,
               "flash_attn_missing": dict(_import_errors), "attention_bf16": backend_report(
                   run.device, torch.bfloat16, 128)}
    if run.device.type == "cuda":
        props = torch.cuda.get_device_properties(run.device)
        figures.update(name=props.name, capability=f"sm_{props.major}{props.minor}", gpus=torch.cuda.device_count(),
                       memory_gib=props.total_memory / 2**30, cudnn=torch.backends.cudnn.version())
    figures["summary"] = (f"{figures.get('name', 'cpu')} {figures.get('capability', '')} torch {torch.__version__}, "
                          f"attention {figures['attention_bf16']}")
    return figures


STAGES = {
    "env": environment,
    "conformance_fp32": lambda run: conformance(run, torch.float32),
    "conformance_bf16": lambda run: conformance(run, torch.bfloat16),
    "attention": attention_backends,
    "dit_bf16": lambda run: dit_chunk(run, "bf16"),
    "dit_fp8": lambda run: dit_chunk(run, "fp8"),
    "dit_graphs": dit_graphs,
    "vae": vae_chunk,
    "memory_plan": memory_plan_vs_measured,
    "server": server_end_to_end,
    "nccl_2rank": two_rank_conformance,
}


def run_stage(name: str, run: CheckRun, seconds: float) -> dict:
    """One stage, bounded by an alarm; never raises: the outcome is in the returned record."""
    def on_alarm(*_):
        raise StageTimeout(f"ran past {seconds:.0f} s")

    start = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(seconds)))
    try:
        figures, status, error = STAGES[name](run), "PASS", ""
    except StageSkipped as exc:
        figures, status, error = {}, "SKIP", str(exc)
    except BaseException as exc:  # noqa: BLE001 - a failed stage is recorded, the run goes on
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc(file=sys.stderr)
        figures, status, error = {}, "FAIL", f"{type(exc).__name__}: {exc}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        gc.collect()
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
    summary = figures.pop("summary", "") if status == "PASS" else error
    return {"stage": name, "status": status, "seconds": time.perf_counter() - start, "summary": summary,
            "figures": figures}


def table(records: list[dict]) -> str:
    width = max(len(r["stage"]) for r in records)
    lines = [f"{'stage':{width}s}  status  seconds  result", "-" * (width + 80)]
    for r in records:
        lines.append(f"{r['stage']:{width}s}  {r['status']:6s}  {r['seconds']:7.1f}  {r['summary'][:400]}")
    return "\n".join(lines)


def plain(value):
    """Figures as JSON-ready values (configs and tensors as text)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script itself")
    ap.add_argument("--fixture", type=Path, default=FIXTURE, help="the shared lingbot_fast_tiny fixture set")
    ap.add_argument("--size", default=None, help="W*H of the chunk, attention and VAE stages (default 832*480)")
    ap.add_argument("--layers", type=int, default=4, help="DiT blocks built for the chunk stages (scaled to 40)")
    ap.add_argument("--iters", type=int, default=3, help="timed chunks per stage (the minimum is reported)")
    ap.add_argument("--ranks", type=int, default=None, help="ranks for nccl_2rank (default: the GPU count)")
    ap.add_argument("--only", action="append", choices=list(STAGES), help="run only these stages")
    ap.add_argument("--budget-s", type=float, default=480.0, help="whole run; later stages are skipped past it")
    ap.add_argument("--stage-timeout-s", type=float, default=240.0)
    ap.add_argument("--out", type=Path, default=REPO / "artifacts")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device here: use --dry-run to check the script on the CPU")
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    if args.dry_run:
        torch.set_num_threads(1)  # as a torchrun rank; several threads only fight on a shared CPU
    size = args.size or ("128*96" if args.dry_run else "832*480")
    width, height = (int(v) for v in size.split("*"))
    ranks = args.ranks if args.ranks is not None else (1 if args.dry_run else torch.cuda.device_count())
    args.out.mkdir(parents=True, exist_ok=True)
    run = CheckRun(device=device, dry_run=args.dry_run, fixture=args.fixture, size=(width, height),
                   layers=args.layers, iters=args.iters, out_dir=args.out, ranks=ranks)
    deadline = time.monotonic() + args.budget_s
    records = []
    for name in args.only or list(STAGES):
        left = deadline - time.monotonic()
        if left < 5:
            records.append({"stage": name, "status": "SKIP", "seconds": 0.0, "figures": {},
                            "summary": f"out of the {args.budget_s:.0f} s budget"})
            continue
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        records.append(run_stage(name, run, min(args.stage_timeout_s, left)))
    path = args.out / f"gpu_check-{time.strftime('%Y%m%d-%H%M%S')}{'-dry' if args.dry_run else ''}.json"
    path.write_text(json.dumps({"dry_run": args.dry_run, "device": str(device), "size": size,
                                "stages": plain(records)}, indent=1))
    print(table(records))
    failed = [r["stage"] for r in records if r["status"] == "FAIL"]
    print(f"\n{len(records) - len(failed)} of {len(records)} stages did not fail"
          f"{'; FAILED: ' + ', '.join(failed) if failed else ''}; figures in {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CLI: python -m inference.conformance FIXTURE_DIR [--only GROUP ...] [--nproc N].

With --nproc N > 1 the command relaunches itself under torchrun with N
ranks (Ulysses size N, FSDP2 on the DiT and T5); rank 0 prints the report.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import traceback

from inference.conformance import GROUPS, Check, Fixture

PARALLEL_GROUPS = ("t5", "dit")  # run on every rank with the parallel layout; the rest on rank 0 only
PARALLEL_TIMEOUT_S = 300.0  # a replay is not latency-critical; rank 0 may spend a while on camera/vae first


def relaunch(nproc: int, fixture_dir: str, only: list[str] | None) -> int:
    """Run this replay under torchrun with `nproc` ranks (each rank reads its count from WORLD_SIZE)."""
    groups = [arg for group in only or () for arg in ("--only", group)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "inference.conformance", fixture_dir, *groups]
    return subprocess.run(cmd).returncode


def parallel_setup(nproc: int):
    """This rank's context and the layout the parallel groups use (all ranks Ulysses, FSDP2 everywhere)."""
    from inference.distributed.context import ParallelContext
    from inference.distributed.options import ParallelOptions

    ctx = ParallelContext.from_env(ulysses_size=nproc, timeout_s=PARALLEL_TIMEOUT_S)
    if ctx.world_size != nproc:
        raise SystemExit(f"--nproc {nproc} but torchrun started {ctx.world_size} ranks")
    return ctx, ParallelOptions(ulysses_size=nproc, dit_fsdp=True, t5_fsdp=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference.conformance", description=__doc__)
    ap.add_argument("fixture_dir", help="a fixture set in the shared layout")
    ap.add_argument("--only", action="append", choices=GROUPS, help="run only these groups")
    ap.add_argument("--nproc", type=int, default=1, help="replay on this many torchrun ranks (CPU: gloo)")
    args = ap.parse_args(argv)
    if args.nproc < 1:
        ap.error(f"--nproc {args.nproc}: expected at least 1")
    if "WORLD_SIZE" in os.environ:  # a torchrun rank: the group size is the rank count
        args.nproc = int(os.environ["WORLD_SIZE"])
    elif args.nproc > 1:
        return relaunch(args.nproc, args.fixture_dir, args.only)

    fixture = Fixture(args.fixture_dir)
    ctx, options = parallel_setup(args.nproc) if args.nproc > 1 else (None, None)
    leader = ctx is None or ctx.is_leader
    passed = failed = 0
    for group in args.only or GROUPS:
        parallel = ctx is not None and group in PARALLEL_GROUPS
        if not (leader or parallel):
            continue
        try:
            module = importlib.import_module(f"inference.conformance.{group}")
            checks = list(module.run(fixture, ctx=ctx, options=options) if parallel else module.run(fixture))
        except Exception as exc:  # a crashing group is a failed check, not a crashed run
            traceback.print_exc(file=sys.stderr)
            checks = [Check(name=f"{group}/run", max_abs_err=float("inf"), atol=0, rtol=0,
                            passed=False, note=f"{type(exc).__name__}: {exc}")]
        for c in checks:
            status = "PASS" if c.passed else "FAIL"
            note = f"  # {c.note}" if c.note else ""
            if leader:
                print(f"{c.name} {c.max_abs_err:.3e} {c.tolerance} {status}{note}", flush=True)
            passed += c.passed
            failed += not c.passed
    if leader:
        print(f"{passed} passed, {failed} failed", flush=True)
    if ctx is not None:
        ctx.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

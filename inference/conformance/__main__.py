"""CLI: python -m inference.conformance FIXTURE_DIR [--only GROUP ...]."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from inference.conformance import GROUPS, Check, Fixture


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference.conformance", description=__doc__)
    ap.add_argument("fixture_dir", help="a fixture set in the shared layout")
    ap.add_argument("--only", action="append", choices=GROUPS, help="run only these groups")
    args = ap.parse_args(argv)

    fixture = Fixture(args.fixture_dir)
    passed = failed = 0
    for group in args.only or GROUPS:
        try:
            module = importlib.import_module(f"inference.conformance.{group}")
            checks = list(module.run(fixture))
        except Exception as exc:  # a crashing group is a failed check, not a crashed run
            traceback.print_exc(file=sys.stderr)
            checks = [Check(name=f"{group}/run", max_abs_err=float("inf"), atol=0, rtol=0,
                            passed=False, note=f"{type(exc).__name__}: {exc}")]
        for c in checks:
            status = "PASS" if c.passed else "FAIL"
            note = f"  # {c.note}" if c.note else ""
            print(f"{c.name} {c.max_abs_err:.3e} {c.tolerance} {status}{note}", flush=True)
            passed += c.passed
            failed += not c.passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

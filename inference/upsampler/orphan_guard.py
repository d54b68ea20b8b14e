"""Exec a command that gets SIGTERM when the process that launched it dies (Linux).

Usage: python orphan_guard.py <launcher-pid> -- <command> [args...]

Run by file path, so it imports nothing of this package and costs one
interpreter start. Without it a front killed by SIGKILL would leave vLLM
holding its share of the GPU; the death signal survives the exec.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print(f"orphan_guard: got {argv!r}; expected <launcher-pid> -- <command> [args...]",
              file=sys.stderr)
        return 2
    launcher = int(argv[0])
    command = argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        print(f"orphan_guard: prctl failed with errno {ctypes.get_errno()}", file=sys.stderr)
        return 1
    if os.getppid() != launcher:
        print(f"orphan_guard: launcher {launcher} died before {command[0]!r} started",
              file=sys.stderr)
        return 1
    sys.stdout.flush()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"orphan_guard: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached: execvp replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

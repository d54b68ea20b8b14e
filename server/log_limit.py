"""Rate-limit repeated log lines, so a flood of one error (e.g. accept() out of file descriptors) cannot fill the disk."""

from __future__ import annotations

import logging
import time

REPEAT_WINDOW_S = 10.0  # one line per message template and window; the next says how many were left out
MAX_TEMPLATES = 1024  # templates remembered (the oldest are forgotten first)


class RepeatFilter(logging.Filter):
    """Lets a (logger, level, template) through once per window and counts what it holds back."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock=time.monotonic):
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self.seen: dict[tuple, list] = {}  # key -> [window start, suppressed count]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        entry = self.seen.get(key)
        if entry is not None and now - entry[0] < self.window_s:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            record.msg = f"{record.msg} [{entry[1]} similar lines in the last {now - entry[0]:.0f} s left out]"
        self.seen.pop(key, None)
        self.seen[key] = [now, 0]
        if len(self.seen) > MAX_TEMPLATES:
            del self.seen[next(iter(self.seen))]
        return True


def install(handler: logging.Handler) -> None:
    """Attach the filter to a handler (every logger that reaches it is limited)."""
    handler.addFilter(RepeatFilter())

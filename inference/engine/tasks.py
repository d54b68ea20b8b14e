"""Engine work between chunks (open a world, change a prompt, render a test frame): fair, coalesced, fitted into gaps.

Chunks always go first; the step loop asks `TaskQueue.pick` only when no chunk
is pending, passing the slack: how long until the next chunk must start (from
each streaming session's next playback deadline). A task's next slice runs
only when its expected cost (per task kind, measured from past slices:
rises at once to a longer slice, falls slowly) plus a margin fits in that
slack. Owners (a front connection for opens, a session for prompts, an HTTP
client for test frames) take turns, so one client's requests cannot crowd
out another's. While a task finds no gap, `wanted_lead` is the extra playback
lead sessions are asked to buffer so that a gap opens. A task that found no
gap within its kind's longest wait runs anyway (a user's world must open
eventually); test frames never do, their request times out instead.

Bounds: at most one pending open per owner (a newer one replaces it), one
pending prompt per session (latest wins), `max_test_frames` test frames in
the engine (more are refused with TaskRefused).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from inference.engine.base import EngineTask

OPEN, PROMPT, TEST_FRAME = "open", "prompt", "test_frame"
KINDS = (OPEN, PROMPT, TEST_FRAME)
FALL_WEIGHT = 0.1  # a shorter slice lowers the estimate by 10 % of the difference; a longer one replaces it


class TaskRefused(RuntimeError):
    """The engine holds as many tasks of this kind as it may; try again later."""


@dataclass(kw_only=True)
class TaskLimits:
    """Scheduling rules per task kind."""

    max_wait_s: dict[str, float | None] = field(
        default_factory=lambda: {OPEN: 4.0, PROMPT: 1.0, TEST_FRAME: None})
    """Longest wait for a gap before a slice runs anyway; None: never forced."""
    first_guess_s: dict[str, float] = field(default_factory=lambda: {OPEN: 0.5, PROMPT: 0.2, TEST_FRAME: 0.5})
    """Expected slice cost before anything was measured (high: a wrong low guess makes a chunk late)."""
    margin_s: float = 0.02
    """Kept free between the end of a slice and the latest start of the next chunk."""
    max_lead_s: float = 1.0
    """Most extra playback lead sessions are asked for."""
    max_test_frames: int = 2
    """Test frames waiting or in progress in the engine."""


@dataclass(kw_only=True, eq=False)
class TaskItem:
    """One queued piece of engine work and what its reply needs."""

    kind: str
    key: str  # session id (open, prompt) or request id (test frame)
    owner: str
    task: EngineTask
    arrived_at: float
    info: dict = field(default_factory=dict)  # reply details (prompt text, sizes, ...)
    scale: float = 1.0  # cost relative to the kind's unit (a test frame: its pixels over a default frame's)
    slices: int = 0
    started: bool = False


class TaskQueue:
    """Pending engine tasks, by owner in round-robin order, with measured per-kind slice costs."""

    def __init__(self, limits: TaskLimits | None = None):
        self.limits = limits or TaskLimits()
        self.costs: dict[str, float] = {kind: self.limits.first_guess_s.get(kind, 0.5) for kind in KINDS}
        self._owners: OrderedDict[str, deque[TaskItem]] = OrderedDict()  # round-robin order of owners
        self._items: dict[tuple[str, str], TaskItem] = {}

    def __len__(self) -> int:
        return len(self._items)

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self._items if k == kind)

    def get(self, kind: str, key: str) -> TaskItem | None:
        return self._items.get((kind, key))

    def add(self, item: TaskItem) -> list[TaskItem]:
        """Queue `item`; returns the items it replaced (already cancelled). Raises TaskRefused when full."""
        replaced = []
        old = self._items.get((item.kind, item.key))
        if old is not None:
            replaced.append(old)
        if item.kind == OPEN:  # one pending open per owner: the newest init wins
            replaced += [o for o in self._owners.get(item.owner, ()) if o.kind == OPEN and o is not old]
        if (item.kind == TEST_FRAME and old is None
                and self.count(TEST_FRAME) >= self.limits.max_test_frames):
            raise TaskRefused(f"{self.limits.max_test_frames} test frames are already being rendered")
        for o in replaced:
            self._remove(o)
            o.task.cancel()
        self._items[(item.kind, item.key)] = item
        self._owners.setdefault(item.owner, deque()).append(item)
        return replaced

    def cancel(self, kind: str, key: str) -> TaskItem | None:
        """Abandon one task (its requester is gone); returns it, or None when it was not queued."""
        item = self._items.get((kind, key))
        if item is not None:
            self._remove(item)
            item.task.cancel()
        return item

    def cancel_key(self, key: str) -> list[TaskItem]:
        """Abandon every task of a session (it closed)."""
        return [item for kind in KINDS if (item := self.cancel(kind, key)) is not None]

    def expected_s(self, kind: str, scale: float = 1.0) -> float:
        """Expected seconds of the next slice of a task of `kind` that is `scale` units large."""
        return self.costs[kind] * scale

    def fits(self, item: TaskItem, slack_s: float) -> bool:
        """Its next slice is expected to end (with the margin) before the next chunk must start."""
        return self._fits(item, slack_s)

    def _fits(self, item: TaskItem, slack_s: float) -> bool:
        return self.expected_s(item.kind, item.scale) + self.limits.margin_s <= slack_s

    def _overdue(self, item: TaskItem, now: float) -> bool:
        wait = self.limits.max_wait_s.get(item.kind)
        return wait is not None and now - item.arrived_at >= wait

    def overdue(self, now: float) -> TaskItem | None:
        """The longest-waiting task past its kind's longest wait (it runs even if a chunk is due)."""
        late = [item for item in self._items.values() if self._overdue(item, now)]
        return min(late, key=lambda item: item.arrived_at) if late else None

    def pick(self, now: float, slack_s: float) -> TaskItem | None:
        """The task whose slice should run now, or None (nothing fits before the next chunk must start)."""
        late = self.overdue(now)
        if late is not None:
            return late
        for queue in self._owners.values():  # round-robin order: the owner served longest ago first
            if self._fits(queue[0], slack_s):
                return queue[0]
        return None

    def ran(self, item: TaskItem, seconds: float, finished: bool) -> None:
        """Record a slice of `item` that took `seconds`; the owner goes to the back of the turn order."""
        item.slices += 1
        item.started = True
        est, unit = self.costs[item.kind], seconds / item.scale
        self.costs[item.kind] = unit if unit > est else est + FALL_WEIGHT * (unit - est)
        if finished:
            self._remove(item)
        if item.owner in self._owners:
            self._owners.move_to_end(item.owner)

    def failed(self, item: TaskItem) -> None:
        """Drop a task whose slice raised (the request was bad)."""
        self._remove(item)

    def wanted_lead(self, now: float, slack_s: float) -> float:
        """Extra playback lead that would open a gap for the costliest task that does not fit now (0: none)."""
        blocked = [self.expected_s(i.kind, i.scale) + self.limits.margin_s for i in self._items.values()
                   if not self._fits(i, slack_s)]
        if not blocked:
            return 0.0
        return min(self.limits.max_lead_s, max(blocked))

    def next_overdue_s(self, now: float) -> float:
        """Seconds until the next forced slice (inf when no waiting task is ever forced)."""
        waits = [self.limits.max_wait_s.get(i.kind) for i in self._items.values()]
        times = [i.arrived_at + w - now for i, w in zip(self._items.values(), waits) if w is not None]
        return max(0.0, min(times)) if times else math.inf

    def _remove(self, item: TaskItem) -> None:
        if self._items.get((item.kind, item.key)) is item:
            del self._items[(item.kind, item.key)]
        queue = self._owners.get(item.owner)
        if queue is not None:
            try:
                queue.remove(item)
            except ValueError:
                pass
            if not queue:
                del self._owners[item.owner]

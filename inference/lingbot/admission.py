"""Admission by bytes: a session or test frame is taken only when the memory plan's need fits measured free memory."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from inference.engine.base import EngineUserError
from inference.models.fp8 import inner_tensors
from inference.tools.memory_plan import FRAGMENTATION, GIB, MemoryPlan

MIB = 2**20


@dataclass(kw_only=True)
class DeviceMemory:
    """One device's memory as this process sees it, bytes."""

    used: int
    """Held by this process (CUDA: allocated by PyTorch; CPU: the resident set)."""
    free: int
    """It could still allocate (CUDA: driver free + the allocator's unused reserve; CPU: MemAvailable)."""
    total: int


def measure(device: torch.device) -> DeviceMemory:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        allocated = torch.cuda.memory_allocated(device)
        slack = torch.cuda.memory_reserved(device) - allocated  # cached by the allocator, reusable by us
        return DeviceMemory(used=allocated, free=free + slack, total=total)
    info = read_meminfo()
    return DeviceMemory(used=resident_bytes(), free=info.get("MemAvailable", 0), total=info.get("MemTotal", 0))


def read_meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes ({} where there is none)."""
    try:
        lines = open("/proc/meminfo").read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def resident_bytes() -> int:
    try:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def module_bytes(module: nn.Module, device: torch.device) -> int:
    """Bytes of a module's parameters and buffers that live on `device` (wrapped tensors by their parts)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for w in tensors if w.device.type == device.type
               for t in inner_tensors(w))


def gib(n: float) -> str:
    """Bytes as GiB with 2 decimals (MiB below one GiB, so tiny models read sensibly)."""
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / MIB:.1f} MiB"


class MemoryGate:
    """Says whether one more session of a size fits on this rank, from the plan and the device's free memory.

    The need of a new session is its resident bytes (KV window unless its
    pool has a free slot, prompt K/V, VAE caches) plus the largest step
    transient once it is open (DiT activations of the biggest batch,
    eviction, VAE decode/encode). It must fit in the measured free memory
    less a fragmentation margin, and, with a limit, the planned total of
    weights + sessions + transient must stay within the limit.

    In an engine group every rank checks its own memory and `agree` gathers
    the verdicts (a refusal reason or None per rank), so all ranks take or
    refuse the same session together.
    """

    def __init__(self, plan: MemoryPlan, device: torch.device, *, weights_bytes: int, rank: int = 0,
                 limit_bytes: int | None = None, enabled: bool = True,
                 agree: Callable[[str | None], list[str | None]] | None = None):
        self.plan = plan
        self.device = device
        self.weights_bytes = weights_bytes
        self.rank = rank
        self.limit_bytes = limit_bytes
        self.enabled = enabled
        self.agree = agree or (lambda reason: [reason])

    def session_bytes(self, width: int, height: int, *, slot_free: bool = False) -> int:
        parts = self.plan.session(width, height, self.rank)
        if slot_free:  # the pool already holds this slot's KV window and prompt K/V
            parts = {k: v for k, v in parts.items() if k not in ("self-attention KV", "prompt K/V")}
        return sum(parts.values())

    def transient(self, sessions: dict[tuple[int, int], int]) -> int:
        """The largest step (or prompt encode) transient with these sessions open."""
        biggest = self.plan.text_encode()
        for (w, h), n in sessions.items():
            if n:
                batch = min(n, self.plan.d.max_batch)
                biggest = max(biggest, sum(self.plan.step(w, h, batch, self.rank).values()))
        return biggest

    def planned(self, sessions: dict[tuple[int, int], int]) -> int:
        """Weights + every open session + the largest transient: the peak the plan expects."""
        held = sum(n * self.session_bytes(w, h) for (w, h), n in sessions.items())
        return self.weights_bytes + held + self.transient(sessions)

    def need(self, sessions: dict[tuple[int, int], int], size: tuple[int, int], *, slot_free: bool) -> int:
        """Bytes beyond what is allocated now that the peak needs once a session of `size` is open."""
        after = {**sessions, size: sessions.get(size, 0) + 1}
        return self.session_bytes(*size, slot_free=slot_free) + self.transient(after)

    def check(self, sessions: dict[tuple[int, int], int], size: tuple[int, int], *, slot_free: bool,
              what: str) -> None:
        """Raise EngineUserError('busy') naming the bytes when `what` (a session, a test frame) does not fit."""
        if not self.enabled:
            return
        reasons = self.agree(self.refusal(sessions, size, slot_free=slot_free))
        refused = [(rank, reason) for rank, reason in enumerate(reasons) if reason is not None]
        if refused:
            rank, reason = refused[0]
            where = f"rank {rank}: " if len(reasons) > 1 else ""
            raise EngineUserError("busy", f"{what} at {size[0]}*{size[1]} does not fit now ({where}{reason}); "
                                  "try again when a session closes, or use a smaller size")

    def refusal(self, sessions: dict[tuple[int, int], int], size: tuple[int, int], *, slot_free: bool) -> str | None:
        """Why one more session of `size` does not fit on this rank, or None when it does."""
        need = self.need(sessions, size, slot_free=slot_free)
        mem = measure(self.device)
        free = mem.free - int(FRAGMENTATION * mem.total)
        held = f"{sum(sessions.values())} session(s) open"
        if need > free:
            return f"needs {gib(need)} on {self.device}, {gib(max(free, 0))} free with {held}"
        if self.limit_bytes is not None:
            planned = self.planned({**sessions, size: sessions.get(size, 0) + 1})
            if planned > self.limit_bytes:
                return (f"the planned peak on {self.device} would be {gib(planned)}, over the "
                        f"--memory-limit-gb of {gib(self.limit_bytes)}, with {held}")
        return None

    def report(self, sessions: dict[tuple[int, int], int]) -> dict[str, float]:
        """Used / planned / free MiB for /status."""
        mem = measure(self.device)
        return {"memory_used_mb": mem.used / MIB, "memory_planned_mb": self.planned(sessions) / MIB,
                "memory_free_mb": mem.free / MIB}

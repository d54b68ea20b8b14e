"""Measured peak bytes a callable allocates beyond what is live (CUDA allocator stats, or the CPU profiler)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def peak_bytes(fn: Callable[[], object], device: torch.device | str) -> int:
    """Largest number of bytes alive at once while fn runs, beyond those alive when it starts.

    CUDA: the caching allocator's peak of allocated bytes (what a plan must
    fit). CPU: the profiler's allocation timeline (every create and free of
    a storage, in order), replayed to find the highest point.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    if device.type != "cpu":
        raise ValueError(f"peak_bytes measures cuda or cpu devices, got {device}")
    return _cpu_peak(fn)


def _cpu_peak(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    try:
        timeline = prof._memory_profile().timeline  # (time, action, (storage, version), bytes) in order
    except AttributeError as exc:  # the profiler's memory timeline moved in this torch release
        raise RuntimeError(f"torch {torch.__version__} has no profiler memory timeline; "
                           "measure CPU peaks with an older torch or on CUDA") from exc
    live = peak = 0
    for _, action, _, size in timeline:
        if action.name == "CREATE":
            live += size
        elif action.name == "DESTROY":
            live -= size
        peak = max(peak, live)
    return peak

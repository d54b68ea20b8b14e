"""Our C++ CPU kernels (inference/models/csrc/), built on first use with the C++ compiler torch.compile uses.

One op today, `lingbot_cpu::bf16_probs`: the DiT's attention probabilities
of bfloat16 queries and keys, their scores summed in float32 at the bfloat16
rate (AVX512-BF16's VDPBF16PS) instead of converting q and k to float32 and
multiplying at half of it, and each row's float32 softmax taken while its
scores are in the cache (csrc/bf16_probs.cpp). The build takes ~10-20 s
once per machine and source version (torch keeps it under
$TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions); setup.sh builds it
ahead (`python -m inference.models.cpu_kernels`). Where it cannot be used
(no AVX512-BF16, no compiler, a failed build, LINGBOT_CPU_KERNELS=0) the
attention multiplies in float32 as before, and `status()` says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "bf16_probs.cpp"
NAME = "lingbot_cpu_kernels"
DISABLE_ENV = "LINGBOT_CPU_KERNELS"  # "0" turns the kernels off

_lock = threading.Lock()
_state: dict[str, str | bool | None] = {"loaded": None, "reason": None}  # loaded: None until tried
_disabled = 0  # `disabled()` nesting depth (tests compare both paths)


def _unavailable_reason() -> str | None:
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return f"{DISABLE_ENV}=0"
    try:
        if not torch.cpu._is_avx512_bf16_supported():
            return "this CPU has no AVX512-BF16"
    except AttributeError:  # a torch without the probe
        return "torch cannot tell whether this CPU has AVX512-BF16"
    return None


def load() -> bool:
    """Build (first time) and load the kernels; True when `bf16_probs` can run here. Never raises: a failure
    is logged once and the float32 path stays in use."""
    with _lock:
        if _state["loaded"] is None:
            reason = _unavailable_reason()
            if reason is None:
                reason = _build()
            _state["loaded"], _state["reason"] = reason is None, reason
            if reason is not None:
                log.info("bf16 attention kernel not used (%s): scores multiply in float32", reason)
        return bool(_state["loaded"])


def _build() -> str | None:
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # torch's loader runs `ninja` from PATH; the pip package has one
        try:
            import ninja

            os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
        except ImportError:
            return "ninja is not installed (pip install ninja)"
    started = time.monotonic()
    log.info("loading the bf16 attention kernel (%s; the first build on a machine takes ~10-20 s)",
             SOURCE.name)
    try:
        cpp_extension.load(name=NAME, sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                           extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    except Exception as exc:  # noqa: BLE001 - no compiler, a failed build: the float32 path still works
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("could not build the bf16 attention kernel: %s", first[:300])
        return f"build failed: {first[:200]}"
    torch.library.register_fake("lingbot_cpu::bf16_probs")(_probs_like)
    log.info("bf16 attention kernel ready in %.1f s", time.monotonic() - started)
    return None


def _probs_like(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    b, lq, h, _ = q.shape
    return q.new_empty(b * h, lq, k.shape[1])


def usable(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether `bf16_probs(q, k, ...)` runs for these inputs: loaded, CPU, bfloat16, even head_dim, contiguous
    head_dim. Loads on the first call outside a compile (a step compiles after `load()`)."""
    if _disabled or q.dtype != torch.bfloat16 or k.dtype != torch.bfloat16 or q.device.type != "cpu":
        return False
    if _state["loaded"] is None and not torch.compiler.is_compiling():
        load()
    return bool(_state["loaded"]) and q.shape[-1] % 2 == 0 and q.stride(-1) == 1 and k.stride(-1) == 1


def bf16_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(scale * q k^T + bias) over keys, (B*H, Lq, Lk) bfloat16, from q (B, Lq, H, D) and k (B, Lk, H, D)
    bfloat16 (scores and softmax in float32); bias (B, Lk) float32 or None. Only where `usable(q, k)`."""
    return torch.ops.lingbot_cpu.bf16_probs(q, k, None if bias is None else bias.contiguous(), scale)


def status() -> str:
    """One line for logs and /status: whether bfloat16 CPU attention uses the kernel, and why not."""
    load()
    return "avx512-bf16 kernel" if _state["loaded"] else f"float32 matmul ({_state['reason']})"


@contextlib.contextmanager
def disabled():
    """Within: attention takes the float32 path even where the kernel is loaded (tests compare the two)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    print(f"bf16 attention scores and softmax: {status()}")

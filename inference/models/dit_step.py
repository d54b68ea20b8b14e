"""How a DiT forward's device work (`CausalDiT.step`) runs: eagerly, compiled by torch.compile, or replayed
from CUDA graphs.

`CausalDiT.forward` does the host work (checks, the cache plan with its
evictions and re-anchoring, RoPE rows, the chunk's camera) and hands tensors
to a step. `CausalDiT.step` reads nothing from the host and takes no Python
value that changes between calls of one (batch, size) signature: the layer
index is a loop constant, and slots, write positions, fill levels and the
prompts' text lengths all arrive as tensors. So:

- `CompiledStep` compiles it once (fullgraph: no graph breaks anywhere) and
  never recompiles across chunks, fill levels, slot sets or prompts (the text
  length of a compact text cache is a dynamic size; so is the read length of
  a global cache, which grows every chunk).
- `GraphedStep` captures it in one CUDA graph per input signature; each call
  copies its inputs into the graph's static buffers, replays, and returns a
  copy of the static output. Eviction and re-anchoring run before, in place,
  on the same cache tensors the graph reads.

Both need the static cache plan (`CausalDiT.forward(static=True)`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch._inductor.config as inductor_config

from inference.models import cpu_kernels
from inference.models.kv_cache import CachePlan, DiTCache
from inference.models.packed_linear import frozen_weights

Step = Callable[..., torch.Tensor]


def compile_mode(compile: bool | str) -> str | None:
    """A `compile` argument (False / True / a mode of COMPILE_MODES) as the mode it asks for (None: eager)."""
    if compile is False or compile is None:
        return None
    mode = "default" if compile is True else compile
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    return mode


def step_mode(*, compile: bool | str, cuda_graphs: bool) -> str:
    """The step's name in /status and logs."""
    mode = compile_mode(compile)
    compiled = [] if mode is None else ["compiled" if mode == "default" else f"compiled ({mode})"]
    parts = compiled + (["cuda graphs"] if cuda_graphs else [])
    return " + ".join(parts) or "eager"


def make_step(dit, *, compile: bool | str = False, cuda_graphs: bool = False) -> Step | None:
    """The step a forward should run (None: `dit.step`, eager); compile: False, True (default mode) or a mode
    of COMPILE_MODES; raises for layouts that cannot."""
    mode = compile_mode(compile)
    if (mode or cuda_graphs) and dit.sequence.ranks > 1:
        raise ValueError(f"--compile / --cuda-graphs run one rank's whole step; with a Ulysses group of "
                         f"{dit.sequence.ranks} ranks the step holds collectives: leave them off")
    step = CompiledStep(dit, mode) if mode else None
    if cuda_graphs:
        device = dit.patch_embedding.weight.device
        if device.type != "cuda":
            raise ValueError(f"--cuda-graphs needs a CUDA device, the DiT is on {device}")
        step = GraphedStep(step or dit.step, device)
    return step


COMPILE_MODES = ("default", "max-autotune")


class CompiledStep:
    """`CausalDiT.step` under torch.compile, one graph per (batch, size) signature and call kind (denoising,
    keys-only update).

    On the CPU the graph freezes the weights (Inductor's `freezing`): they
    enter as constants, so Inductor packs each linear's weight for oneDNN
    (bfloat16) or MKL (float32) once and fuses the bias and the FFN's GELU
    into the product, which the opaque packed op of an unfrozen compile
    hides from it; its kernels are called from a C++ wrapper. The steps run
    without autograd (inference only) and keep the weights they were
    compiled with: a weight changed in place afterwards (its version counter
    moves) is refused, not silently ignored. mode
    "max-autotune" also times Inductor's own GEMM kernels (C++ templates on
    the CPU) against the library's for each shape and keeps the faster; it
    compiles much longer (seconds per GEMM shape).
    """

    def __init__(self, dit, mode: str = "default"):
        mode = compile_mode(mode)  # checked once, where make_step checks it
        self.frozen = dit.patch_embedding.weight.device.type == "cpu"
        if self.frozen and dit.patch_embedding.weight.dtype == torch.bfloat16:
            cpu_kernels.load()  # before tracing: the graph calls the bf16 attention op where it can run
        # the CPU: the graph's kernels called from C++ (Python's per-kernel calls cost ~2 ms per step here)
        options: dict = {"cpp_wrapper": True} if self.frozen else {}
        if mode == "max-autotune":
            options.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN" if self.frozen else "ATEN,TRITON")
        self.fn = torch.compile(dit.step, fullgraph=True, options=options or None)
        # what the frozen graphs were built from: every parameter and buffer with its version
        self._weights = [(name, t, t._version) for name, t in
                         (*dit.named_parameters(), *dit.named_buffers())] if self.frozen else []

    def __call__(self, x, y, time, camera, rope, cache: DiTCache, plan: CachePlan) -> torch.Tensor:
        if plan.span is not None:
            raise ValueError("a compiled step needs the static cache plan (forward(static=True))")
        for name, tensor, version in self._weights:
            if tensor._version != version:
                raise RuntimeError(f"DiT weight {name} changed after its step was compiled with the weights frozen "
                                   f"into the graph; build a new CompiledStep (a new pipeline) after loading weights")
        # The slot pool grows one slot at a time: the slot dimension is a size the graph does not specialise on
        # (unbacked: not even on 1, which a pool of one slot has).
        for store in (cache.self_kv.k, cache.self_kv.v, cache.text.k, cache.text.v):
            torch._dynamo.decorators.mark_unbacked(store, 1)
        if plan.text_bias is not None:  # (B, T): T is the batch's longest prompt, which changes with prompts
            torch._dynamo.maybe_mark_dynamic(plan.text_bias, 1)
        if plan.key_mask is not None and not cache.self_kv.window:  # a global cache's valid prefix grows
            torch._dynamo.maybe_mark_dynamic(plan.key_mask, 1)
        if not self.frozen:
            return self.fn(x, y, time, camera, rope, cache, plan)
        # Dynamo reads `freezing` as it traces (to keep the parameters in the graph as constants rather than
        # inputs), before torch.compile's options apply: so it is set around the call, and freezing also needs
        # a graph compiled without autograd
        with torch.no_grad(), frozen_weights(), inductor_config.patch(freezing=True):
            return self.fn(x, y, time, camera, rope, cache, plan)


class StaticInputs:
    """Static copies of one call's tensor inputs, and the step arguments built on them once.

    `load` copies a later call's tensors in; running the step on `args` then
    computes that call, because every per-call value is one of these tensors
    (what a CUDA graph replay needs; tests check it on the CPU).
    """

    def __init__(self, x, y, time, camera, rope, plan: CachePlan):
        if plan.span is not None:
            raise ValueError("a graph-captured step needs the static cache plan (forward(static=True))")
        flat, rebuild = flat_inputs(x, y, time, camera, rope, plan)
        self.buffers = [v.clone() for v in flat if v is not None]
        it = iter(self.buffers)
        self.args = rebuild([None if v is None else next(it) for v in flat])  # (x, y, time, camera, rope, plan)

    @staticmethod
    def key_of(x, y, time, camera, rope, plan: CachePlan) -> tuple:
        flat, _ = flat_inputs(x, y, time, camera, rope, plan)
        return plan.read_tokens, plan.keys_only, tuple(None if v is None else (tuple(v.shape), v.dtype) for v in flat)

    def run(self, step: Step, cache: DiTCache) -> torch.Tensor:
        """The step on the static inputs (what a capture records)."""
        x, y, time, camera, rope, plan = self.args
        return step(x, y, time, camera, rope, cache, plan)

    def load(self, x, y, time, camera, rope, plan: CachePlan) -> None:
        flat, _ = flat_inputs(x, y, time, camera, rope, plan)
        for static, value in zip(self.buffers, (v for v in flat if v is not None)):
            static.copy_(value, non_blocking=True)


class ReplayedStep:
    """What GraphedStep does, without CUDA: per input signature, static buffers made on the first call; each
    call copies its tensors in and re-runs the step on the buffers. Equal to eager exactly when every per-call
    value reaches the step as one of those tensors (tests and `gpu_check --dry-run` check that on the CPU)."""

    def __init__(self, step: Step):
        self.step = step
        self.inputs: dict[tuple, StaticInputs] = {}

    def __call__(self, x, y, time, camera, rope, cache: DiTCache, plan: CachePlan) -> torch.Tensor:
        key = (id(cache), StaticInputs.key_of(x, y, time, camera, rope, plan))
        if key not in self.inputs:
            self.inputs[key] = StaticInputs(x, y, time, camera, rope, plan)
        self.inputs[key].load(x, y, time, camera, rope, plan)
        return self.inputs[key].run(self.step, cache)


@dataclass(kw_only=True)
class Captured:
    """One CUDA graph of the step with the static buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: StaticInputs
    output: torch.Tensor | None
    cache: weakref.ref
    """The cache whose tensors the graph reads and writes (a dead reference drops the graph)."""


class GraphedStep:
    """CUDA graphs of a step (eager or compiled): captured on the first call of each input signature.

    A signature is every tensor input's shape and dtype, which inputs are
    None, the plan's read length and keys-only flag, and the cache object. Graphs share one
    memory pool (replays never overlap). The returned tensor is a copy: the
    next replay overwrites the static output.
    """

    def __init__(self, step: Step, device: torch.device, *, warmup: int = 2):
        self.step = step
        self.device = device
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, Captured] = {}
        self.captures = 0

    def __call__(self, x, y, time, camera, rope, cache: DiTCache, plan: CachePlan) -> torch.Tensor:
        key = (id(cache), StaticInputs.key_of(x, y, time, camera, rope, plan))
        captured = self.graphs.get(key)
        if captured is not None and captured.cache() is not cache:
            captured = None  # another cache now has the old one's id
        if captured is None:
            self.graphs = {k: c for k, c in self.graphs.items() if c.cache() is not None}
            captured = self.graphs[key] = self.capture(StaticInputs(x, y, time, camera, rope, plan), cache)
        else:
            captured.inputs.load(x, y, time, camera, rope, plan)
        captured.graph.replay()
        return None if captured.output is None else captured.output.clone()  # None: a keys-only update

    def capture(self, inputs: StaticInputs, cache: DiTCache) -> Captured:
        """Warm up on a side stream, then capture. Warm-up calls write the same keys the real call writes."""
        run = lambda: inputs.run(self.step, cache)  # noqa: E731
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = run()
        self.captures += 1
        return Captured(graph=graph, inputs=inputs, output=output, cache=weakref.ref(cache))


def flat_inputs(x, y, time, camera, rope, plan: CachePlan) -> tuple[list, Callable[[list], tuple]]:
    """The step's tensor inputs as one flat list (None where absent), and the inverse: list -> step arguments
    (x, y, time, camera, rope, plan) with those tensors in place."""
    per_layer = isinstance(camera, list)
    cameras = [t for pair in camera for t in pair] if per_layer else [camera]
    flat = [x, y, time, *rope, plan.rows, plan.write, plan.key_mask, plan.text_bias, *cameras]

    def rebuild(values: list) -> tuple:
        x_, y_, time_, cos, sin, rows, write, mask, bias, *cams = values
        cam = [(cams[i], cams[i + 1]) for i in range(0, len(cams), 2)] if per_layer else cams[0]
        new_plan = replace(plan, rows=rows, write=write, key_mask=mask, text_bias=bias)
        return x_, y_, time_, cam, (cos, sin), new_plan

    return flat, rebuild

"""Our C++ bf16 attention kernel: the float32 path's probabilities to their bfloat16 rounding, used by eager and
compiled steps, and off, with the reason said, where it cannot run (the attention then works as before)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference.models import cpu_kernels
from inference.models.attention import attention
from inference.models.config import DiTConfig
from inference.models.dit import CausalDiT, ChunkCamera
from inference.models.dit_step import CompiledStep
from tests.tolerance import reorder_atol

ROOT = Path(__file__).resolve().parents[2]
BF16_EPS = torch.finfo(torch.bfloat16).eps
FLUSHED = 1.3e-38  # e^-87.3: the kernel's exp() returns 0 below it


@pytest.fixture(scope="module")
def kernel():
    if not cpu_kernels.load():
        pytest.skip(f"the bf16 attention kernel cannot run here: {cpu_kernels.status()}")


def exact_probs(q, k, bias, scale):
    """softmax(scale q k^T + bias) of the bfloat16 inputs in float64, as float32 (B*H, Lq, Lk)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    if bias is not None:
        scores = scores + bias.double()[:, None, None, :]
    return torch.softmax(scores, dim=-1).flatten(0, 1).float()


def assert_probs_close(got, want, what):
    """bfloat16 probabilities within one rounding of the exact ones (float32 scores and softmax add ~1e-6 of
    relative error, far under bfloat16's 4e-3); hidden keys exactly 0; probabilities at the bottom of float32's
    normal range (the kernel flushes exp() below e^-87.3 = 1.3e-38) count as 0."""
    assert got.dtype == torch.bfloat16 and got.shape == want.shape, what
    err = (got.float() - want).abs()
    bound = BF16_EPS * want + FLUSHED
    assert bool((err <= bound).all()), f"{what}: {int((err > bound).sum())} probabilities off, worst {err.max():.3e}"
    assert bool((got[want == 0] == 0).all()), f"{what}: a hidden key got probability"


@pytest.mark.parametrize("batch,queries,keys,heads,dim", [
    (1, 180, 600, 8, 64),  # the issue-14 chunk against its window
    (2, 37, 65, 3, 16),  # rows and keys that fill no tile, text-sized key count
    (1, 5, 130, 2, 128),  # the real model's head_dim, one partial tile of rows
    (1, 7, 1, 1, 2),  # one key
])
def test_bf16_probs_are_the_exact_ones_rounded(kernel, batch, queries, keys, heads, dim):
    g = torch.Generator().manual_seed(queries)
    q = (3 * torch.randn(batch, queries, heads, dim, generator=g)).bfloat16()  # scores of tens: peaky rows
    k = (3 * torch.randn(batch, keys, heads, dim, generator=g)).bfloat16()
    bias = torch.randn(batch, keys, generator=g)
    bias[:, 1: keys // 5 + 1] = float("-inf")  # unfilled window slots
    bias[-1, -1] = math.log(7)  # a compact text row standing for 7
    for b in (bias, None):
        for scale in (dim ** -0.5, 0.3):
            got = cpu_kernels.bf16_probs(q, k, b, scale)
            assert_probs_close(got, exact_probs(q, k, b, scale), f"bias {b is not None} scale {scale}")
    # strided views (a slice of heads, as the blocked direct path passes; keys inside a larger buffer): the same
    # arithmetic as on contiguous copies
    store = torch.zeros(batch, keys + 9, heads + 2, dim, dtype=torch.bfloat16)
    store[:, 4:4 + keys, 1:1 + heads] = k
    assert torch.equal(cpu_kernels.bf16_probs(q[:, :, 1:], store[:, 4:4 + keys, 2:1 + heads], bias, 0.3),
                       cpu_kernels.bf16_probs(q[:, :, 1:].contiguous(), k[:, :, 1:].contiguous(), bias, 0.3))


def test_bf16_attention_with_the_kernel_is_the_float32_paths(kernel):
    """Whole attention calls (mask, log-count bias, peaky scores) agree with the float32 path's to the rounding of
    their bfloat16 probabilities and outputs."""
    g = torch.Generator().manual_seed(11)
    q, k = ((3 * torch.randn(2, 48, 4, 64, generator=g)).bfloat16() for _ in range(2))
    v = torch.randn(2, 48, 4, 64, generator=g).bfloat16()
    mask = torch.arange(48)[None, :] < torch.tensor([48, 30])[:, None]
    for key_mask in (None, mask, torch.where(mask, 0.0, float("-inf")) + math.log(3) * (torch.arange(48) == 5)):
        with cpu_kernels.disabled():
            want = attention(q, k, v, key_mask)
        got = attention(q, k, v, key_mask)
        assert got.dtype == torch.bfloat16
        # one bfloat16 rounding of the output either side of a float32-close value
        assert (got.float() - want.float()).abs().max() <= 2 * torch.finfo(torch.bfloat16).eps * want.float(
            ).abs().max(), f"mask {type(key_mask)}"


@pytest.mark.slow
@pytest.mark.timeout(600)
@torch.no_grad()
def test_a_compiled_bf16_step_calls_the_kernel_and_equals_eager(kernel):
    torch.manual_seed(0)
    config = DiTConfig.tiny(text_dim=32, local_attn_size=6, sink_size=1)
    model = CausalDiT(config).eval().to(torch.bfloat16).keep_islands_float32()
    caches = [model.new_cache(capacity=1, frame_seqlen=6) for _ in range(2)]
    prompt = torch.randn(7, 32, generator=torch.Generator().manual_seed(1))
    for cache in caches:
        model.set_prompt(cache, 0, prompt)
    step = CompiledStep(model)
    g = torch.Generator().manual_seed(2)
    for index in range(3):
        x, y = torch.randn(1, 16, 3, 4, 6, generator=g), torch.randn(1, 20, 3, 4, 6, generator=g)
        camera = ChunkCamera(torch.randn(1, 384, 3, 4, 6, generator=g))
        t = torch.tensor([700])
        want = model(x, y, t, camera, caches[0], [3 * index])
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            got = model(x, y, t, camera, caches[1], [3 * index], step=step, static=True)
        calls = sum(e.count for e in prof.key_averages() if e.key == "lingbot_cpu::bf16_probs")
        if index:  # (the first call also compiles, which runs the graph's ops on the side)
            assert calls == 2 * config.num_layers, f"chunk {index}: {calls} kernel calls in the compiled step"
        scale = float(want.abs().max())
        atol = reorder_atol(torch.bfloat16, scale, config.num_layers * config.ffn_dim)
        assert (got - want).abs().max() <= atol, f"chunk {index}: compiled differs from eager"
        for cache in caches:  # both caches advance as a chunk's update would
            model(x, y, torch.zeros(1), camera, cache, [3 * index], keys_only=True)


def run_probe(env: dict) -> str:
    code = ("import torch; from inference.models.attention import attention, backend_report; "
            "q = torch.randn(1, 7, 2, 16).bfloat16(); out = attention(q, q, q); "
            "print(backend_report(torch.device('cpu'), torch.bfloat16, 16), tuple(out.shape), out.dtype)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_turned_off_the_attention_says_so_and_multiplies_in_float32():
    out = run_probe({cpu_kernels.DISABLE_ENV: "0"})
    assert out == "direct (bf16: float32 matmul (LINGBOT_CPU_KERNELS=0)) (1, 7, 2, 16) torch.bfloat16"


@pytest.mark.slow
def test_a_failed_build_is_reported_and_attention_still_works(tmp_path):
    """No working C++ compiler (CXX fails): the build fails once, the report says so, attention runs."""
    failing = tmp_path / "cxx"
    failing.write_text("#!/bin/sh\necho 'no compiler here' >&2\nexit 1\n")
    failing.chmod(0o755)
    out = run_probe({"CXX": str(failing), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")})
    if "this CPU has no AVX512-BF16" in out:
        pytest.skip("the kernel is not tried on this CPU, so no build can fail")
    assert out.startswith("direct (bf16: float32 matmul (build failed: ") and out.endswith(
        "(1, 7, 2, 16) torch.bfloat16"), out

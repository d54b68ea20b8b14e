"""The model stages of bench/gpu_check.py: conformance on the device, attention backends, chunk times, VAE, memory.

Each stage takes the CheckRun and returns a dict of figures (with a one-line
'summary'); it raises StageFailed (or any exception) to fail and StageSkipped
to skip. Figures a later stage needs go into run.shared.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_chunk import BF16_DENSE_PEAK_TFLOPS, chip_peak, dit_forward_flops, one_chunk, random_dit  # noqa: E402
from inference.conformance import Fixture  # noqa: E402
from inference.conformance.dit import RolloutFile, call, new_session  # noqa: E402
from inference.models import attention as attn  # noqa: E402
from inference.models.checkpoint import load_dit_checkpoint  # noqa: E402
from inference.models.config import DiTConfig  # noqa: E402
from inference.models.fp8 import quantize_blocks, weight_bytes  # noqa: E402
from inference.models.sampler import FlowMatchSampler  # noqa: E402
from inference.models.vae import StreamingDecoder, StreamingEncoder, VAEConfig, WanVAE, load_vae  # noqa: E402
from inference.tools.memory_plan import Deployment, MemoryPlan, ModelShapes  # noqa: E402
from inference.tools.memory_probe import peak_bytes  # noqa: E402

REAL_LAYERS = 40
# Tolerances per weight dtype: float32 as the CPU conformance replay; bf16 keeps 8 significant bits, so a DiT
# call (tens of roundings in sequence) is judged by its relative L2 error.
FP32_CALL = dict(atol=1e-4, rtol=1e-4)
FP32_ROLLOUT = dict(atol=1e-3, rtol=1e-3)
BF16_REL = {"call": 2e-2, "rollout": 5e-2}
ATTENTION_TOL = dict(max_abs=2e-2, rel=1e-2)  # bf16 outputs of a softmax average of N(0, 1) values
PLAN_UNDER = 1.15  # a measured peak this much above the plan fails: admission would let the GPU run out


class StageFailed(AssertionError):
    """A stage ran and its result is wrong."""


class StageSkipped(Exception):
    """A stage that does not apply here (e.g. two ranks on one GPU)."""


@dataclass(kw_only=True)
class CheckRun:
    """What every stage sees: where it runs, how big, and the figures earlier stages left."""

    device: torch.device
    dry_run: bool
    fixture: Path
    size: tuple[int, int]
    layers: int
    iters: int
    out_dir: Path
    ranks: int = 1
    shared: dict = field(default_factory=dict)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def within(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> tuple[bool, float]:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    diff = (a - b).abs()
    return bool((diff <= atol + rtol * b.abs()).all() and torch.isfinite(a).all()), float(diff.max())


# -- conformance on the device ---------------------------------------------------------------------------


def conformance(run: CheckRun, dtype: torch.dtype) -> dict:
    """Every stored DiT call, a free-running rollout and a VAE decode of the fixture, on the device in dtype."""
    if not run.fixture.is_dir():
        raise StageFailed(f"fixture {run.fixture} not found (pass --fixture)")
    allow = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32
    try:
        with torch.no_grad():
            figures = dit_conformance(run, dtype) | vae_conformance(run, dtype)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = allow
    bad = [k for k, v in figures.items() if k.endswith("_ok") and not v]
    figures["summary"] = (f"flow rel {figures['flow_rel_max']:.1e}, rollout rel {figures['rollout_rel']:.1e}, "
                          f"VAE rel {figures['vae_rel']:.1e}{'' if dtype == torch.float32 else ' (not judged)'}")
    if bad:
        raise StageFailed(f"{', '.join(bad)} out of tolerance: {figures['summary']}")
    return figures


def dit_conformance(run: CheckRun, dtype: torch.dtype) -> dict:
    fixture = Fixture(run.fixture)
    model = load_dit_checkpoint(fixture.path("transformer"), device=run.device, dtype=dtype)
    roll = RolloutFile(fixture)
    roll.t = {k: v.to(run.device) for k, v in roll.t.items()}
    sampler = FlowMatchSampler(step_indices=roll["timesteps_index"].tolist())
    cache, worst_abs, worst_rel, calls_ok = new_session(model, roll), 0.0, 0.0, True
    for c in range(roll.num_chunks):
        for s in range(roll.num_steps):
            key = f"chunk{c}/step{s}"
            flow = call(model, cache, roll, c, roll[f"{key}/x"], roll[f"{key}/t"]).float()
            ok, err = within(flow, roll[f"{key}/noise_pred"], **FP32_CALL)
            rel = rel_l2(flow, roll[f"{key}/noise_pred"])
            calls_ok &= ok if dtype == torch.float32 else rel <= BF16_REL["call"]
            worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
        call(model, cache, roll, c, roll[f"chunk{c}/update/x"], roll[f"chunk{c}/update/t"])
    latents = free_running(model, sampler, roll, run.device)
    rollout_ok, rollout_abs = within(latents, roll["x0_latents"], **FP32_ROLLOUT)
    rollout_rel = rel_l2(latents, roll["x0_latents"])
    if dtype != torch.float32:
        rollout_ok = rollout_rel <= BF16_REL["rollout"]
    return {"calls": roll.num_chunks * roll.num_steps, "flow_abs_max": worst_abs, "flow_rel_max": worst_rel,
            "calls_ok": calls_ok, "rollout_abs": rollout_abs, "rollout_rel": rollout_rel, "rollout_ok": rollout_ok}


def free_running(model, sampler: FlowMatchSampler, roll: RolloutFile, device: torch.device) -> torch.Tensor:
    """The reference's rollout from its seed: noise drawn on the host generator, the model on the device."""
    generator = torch.Generator().manual_seed(int(roll["noise_seed"]))
    noise = torch.randn(roll["noise_init"].shape, generator=generator)  # (16, F, h, w) on the host
    cache, chunks = new_session(model, roll), []
    for c, x in enumerate(noise.split(roll.chunk_size, dim=1)):
        x = x.to(device)
        for s in range(roll.num_steps):
            flow = call(model, cache, roll, c, x, sampler.timestep(s, 1, device)).float()
            x0 = sampler.to_x0(s, x, flow)
            if s < roll.num_steps - 1:
                x = sampler.renoise(s + 1, x0, torch.randn(x0.shape, generator=generator).to(device))
        chunks.append(x0)
        call(model, cache, roll, c, x0, torch.zeros(1, device=device))
    return torch.cat(chunks, dim=1)


def vae_conformance(run: CheckRun, dtype: torch.dtype) -> dict:
    fixture = Fixture(run.fixture)
    config = VAEConfig.from_json(fixture.path("vae/vae_config.json"))
    vae = load_vae(fixture.path("vae/vae.pth"), run.device, dtype, config=config)
    golden = fixture.tensors("vae/goldens.safetensors")
    raw = vae.decode(golden["encode/latent"][None].to(run.device))[0].float()
    ok, err = within(raw, golden["decode/video_raw"], atol=1e-3, rtol=1e-3)
    rel = rel_l2(raw, golden["decode/video_raw"])
    if dtype != torch.float32:  # the engine decodes in float32; a bf16 VAE's error is reported, not judged
        return {"vae_abs": err, "vae_rel": rel}
    return {"vae_abs": err, "vae_rel": rel, "vae_ok": ok}


# -- attention backends -----------------------------------------------------------------------------------


def attention_backends(run: CheckRun) -> dict:
    """FA3 / FA2 / SDPA on the real window shape agree with a float32 reference (and the masked SDPA path)."""
    c = DiTConfig.tiny() if run.dry_run else DiTConfig.a14b_fast()
    tokens = ((run.size[1] // 16) * (run.size[0] // 16))
    lq, lk, dtype = 3 * tokens, 12 * tokens, torch.bfloat16
    g = torch.Generator(device=run.device).manual_seed(0)
    q, k, v = (torch.randn(1, n, c.num_heads, c.head_dim, device=run.device, generator=g, dtype=dtype)
               for n in (lq, lk, lk))
    reference = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    kernels = {"sdpa": lambda: F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)}
    if run.device.type == "cpu":  # the CPU's path; on a GPU its (Lq, Lk) scores per head would not fit
        kernels["direct"] = lambda: attn.direct_attention(q, k, v)
    if run.device.type == "cuda" and attn._fa2 is not None:
        kernels["fa2"] = lambda: attn._fa2.flash_attn_func(q, k, v, causal=False)
    if run.device.type == "cuda" and attn._fa3 is not None and attn._compute_capability(
            run.device.index or 0) == attn.FA3_CAPABILITY:
        kernels["fa3"] = lambda: (lambda out: out[0] if isinstance(out, tuple) else out)(
            attn._fa3.flash_attn_func(q, k, v, causal=False))
    figures, failed = {"used": attn.backend_report(run.device, dtype, c.head_dim)}, []
    for name, kernel in kernels.items():
        out = kernel()
        sync(run.device)
        t0 = time.perf_counter()
        out = kernel()
        sync(run.device)
        ms = (time.perf_counter() - t0) * 1000
        err, rel = float((out.float() - reference).abs().max()), rel_l2(out.float(), reference)
        figures[name] = {"max_abs": err, "rel": rel, "ms": ms}
        if err > ATTENTION_TOL["max_abs"] or rel > ATTENTION_TOL["rel"]:
            failed.append(f"{name} max abs {err:.2e} rel {rel:.2e}")
    masked = masked_attention_error(q[:, : lq // 4], k[:, : lk // 4], v[:, : lk // 4])
    figures["masked_max_abs"] = masked
    if masked > ATTENTION_TOL["max_abs"]:
        failed.append(f"masked attention (a batch with two window lengths) max abs {masked:.2e}")
    figures["summary"] = f"{'/'.join(kernels)} + masked attention agree (used: {figures['used']}); " + ", ".join(
        f"{n} {figures[n]['ms']:.1f} ms" for n in kernels)
    if failed:
        raise StageFailed("; ".join(failed))
    return figures


def masked_attention_error(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    """`attention` on a batch of two items, the second attending only the first half of the keys (key_mask),
    against each item attended alone in float32."""
    lk = k.shape[1]
    mask = torch.ones(2, lk, dtype=torch.bool, device=q.device)
    mask[1, lk // 2:] = False
    out = attn.attention(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1), mask)
    worst = 0.0
    for item, keys in ((0, lk), (1, lk // 2)):
        alone = F.scaled_dot_product_attention(q.float().transpose(1, 2), k[:, :keys].float().transpose(1, 2),
                                               v[:, :keys].float().transpose(1, 2)).transpose(1, 2)
        worst = max(worst, float((out[item:item + 1].float() - alone).abs().max()))
    return worst


# -- chunk times and memory --------------------------------------------------------------------------------


def model_config(run: CheckRun) -> DiTConfig:
    if run.dry_run:  # narrow, but wide enough for the blocks to hold the activation peak as at full size
        return DiTConfig.tiny(dim=256, ffn_dim=704, num_heads=2, num_layers=2, local_attn_size=12, sink_size=3)
    return DiTConfig.a14b_fast(num_layers=run.layers, local_attn_size=12, sink_size=3)


def dit_chunk(run: CheckRun, weights: str) -> dict:
    """Steady-state chunk (window full) of the real shape with `layers` blocks, scaled to 40; memory measured."""
    config, (width, height) = model_config(run), run.size
    # CPU bf16 linears reorder their weights per call (a CPU-only copy): the dry run measures float32
    dtype = torch.float32 if run.dry_run else torch.bfloat16
    dit = random_dit(config, run.device, dtype)
    path = quantize_blocks(dit, dit.blocks) if weights == "fp8" else str(dtype).removeprefix("torch.")
    h, w = height // 8, width // 8
    frame_seqlen = (h // 2) * (w // 2)
    cache = dit.new_cache(capacity=1, frame_seqlen=frame_seqlen)
    dit.set_prompt(cache, 0, torch.randn(min(120, config.text_len), config.text_dim, device=run.device))
    sampler, shape = FlowMatchSampler(), (1, 16, 3, h, w)
    y = torch.randn(1, 20, 3, h, w, device=run.device)
    control = torch.randn(1, config.control_channels, 3, h, w, device=run.device)
    fill = 4 + 2  # chunks until the 12-frame window is full, then two warm-up chunks
    for c in range(fill):
        one_chunk(dit, sampler, cache, 3 * c, y, control, shape, run.device)
    times = []
    for c in range(fill, fill + run.iters):
        sync(run.device)
        t0 = time.perf_counter()
        one_chunk(dit, sampler, cache, 3 * c, y, control, shape, run.device)
        sync(run.device)
        times.append((time.perf_counter() - t0) * 1000)
    c = fill + run.iters
    transient = peak_bytes(lambda: one_chunk(dit, sampler, cache, 3 * c, y, control, shape, run.device), run.device)
    scale = (config.num_layers if run.dry_run else REAL_LAYERS) / config.num_layers
    ms = min(times) * scale
    flops = 5 * dit_forward_flops(config, 3 * frame_seqlen, cache.self_kv.local_end[0]) * scale
    name = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu"
    key, peak = chip_peak(name)
    tflops = flops / (ms / 1000) / 1e12
    figures = {"path": path, "ms_per_chunk": ms, "layers_built": config.num_layers, "scaled_to": config.num_layers
               * scale, "tflops": tflops, "peak_tflops": peak, "fraction_of_peak": tflops / peak if peak else None,
               "weight_bytes": weight_bytes(dit), "step_transient_bytes": transient,
               "kv_bytes": cache.self_kv.k.numel() * cache.self_kv.k.element_size() * 2}
    run.shared[f"dit_{weights}"] = figures | {"config": config}
    frac = f", {tflops / peak:.0%} of {key} bf16 peak" if peak else ""
    figures["summary"] = f"{path}: {ms:.1f} ms/chunk (x{scale:.0f} from {config.num_layers} layers), " \
                         f"{tflops:.1f} TFLOP/s{frac}"
    if weights == "fp8" and "dit_bf16" in run.shared:
        ratio = run.shared["dit_bf16"]["ms_per_chunk"] / ms
        figures["speedup_vs_bf16"] = ratio
        figures["summary"] += f"; {ratio:.2f}x bf16's speed"
    return figures


def vae_chunk(run: CheckRun) -> dict:
    """Real Wan2.1 VAE (random weights): steady decode of 3 latents and encode of 12 frames, float32 and bf16."""
    config = VAEConfig(dim=4, num_res_blocks=1) if run.dry_run else VAEConfig.wan21()
    width, height = run.size
    figures = {}
    for dtype in (torch.float32, torch.bfloat16):
        vae = WanVAE(config).to(device=run.device, dtype=dtype).eval()
        decoder, encoder = StreamingDecoder(vae), StreamingEncoder(vae)
        latents = torch.randn(1, 16, 3, height // 8, width // 8, device=run.device)
        black = torch.zeros(1, 3, 12, height, width, device=run.device)
        with torch.no_grad():
            decoder.decode_chunk(latents)
            encoder.encode_chunk(black[:, :, :9])
            decode = peak_bytes(lambda: decoder.decode_chunk(latents), run.device)
            encode = peak_bytes(lambda: encoder.encode_chunk(black), run.device)
            times = []
            for _ in range(run.iters):
                sync(run.device)
                t0 = time.perf_counter()
                decoder.decode_chunk(latents)
                sync(run.device)
                times.append((time.perf_counter() - t0) * 1000)
        name = str(dtype).removeprefix("torch.")
        figures[name] = {"decode_ms": min(times), "decode_peak_bytes": decode, "encode_peak_bytes": encode}
        run.shared[f"vae_{name}"] = figures[name] | {"config": config}
        del vae, decoder, encoder
    figures["summary"] = ", ".join(f"{n} decode {f['decode_ms']:.0f} ms/chunk" for n, f in figures.items())
    return figures


def memory_plan_vs_measured(run: CheckRun) -> dict:
    """The plan's step transients and KV bytes against the measured peaks of the chunk and VAE stages."""
    width, height = run.size
    rows, worst = {}, 0.0
    for weights in ("bf16", "fp8"):
        got = run.shared.get(f"dit_{weights}")
        if got is None:
            continue
        dtype = "float32" if run.dry_run else "bfloat16"
        deployment = Deployment(weights=weights, dtype=dtype, direct_attention=run.device.type == "cpu")
        plan = MemoryPlan(deployment, ModelShapes(dit=got["config"]))
        step = plan.step(width, height, 1)
        planned = (step["DiT activations"] + step["KV eviction (one layer)"] + step.get("fp8 dequantized weight", 0)
                   + step.get("attention scores (direct path)", 0))
        rows[f"dit_{weights}_step"] = (got["step_transient_bytes"], planned)
        rows[f"dit_{weights}_kv"] = (got["kv_bytes"], plan.session(width, height)["self-attention KV"])
    for dtype in ("float32", "bfloat16"):
        got = run.shared.get(f"vae_{dtype}")
        if got is None:
            continue
        plan = MemoryPlan(Deployment(vae_dtype=dtype), ModelShapes(vae=got["config"]))
        planned = plan.step(width, height, 1)["VAE decode or encode (one session)"]
        rows[f"vae_{dtype}_decode"] = (got["decode_peak_bytes"], planned)
        rows[f"vae_{dtype}_encode"] = (got["encode_peak_bytes"], planned)
    if not rows:
        raise StageSkipped("no chunk or VAE stage ran")
    figures = {name: {"measured": m, "planned": p, "ratio": m / p if p else math.inf} for name, (m, p) in rows.items()}
    worst = max(f["ratio"] for f in figures.values())
    figures["summary"] = "measured/planned " + ", ".join(f"{n} {f['ratio']:.2f}" for n, f in figures.items())
    over = [n for n, f in figures.items() if isinstance(f, dict) and f["ratio"] > PLAN_UNDER]
    if over:
        raise StageFailed(f"the plan under-estimates {', '.join(over)} (worst x{worst:.2f}): {figures['summary']}")
    return figures


__all__ = ["BF16_DENSE_PEAK_TFLOPS", "CheckRun", "StageFailed", "StageSkipped", "attention_backends",
           "conformance", "dit_chunk", "memory_plan_vs_measured", "vae_chunk"]

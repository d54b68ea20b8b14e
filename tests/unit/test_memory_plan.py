"""The memory plan: A14B-fast figures from the config, per-rank layouts, the CLI table, the README table."""

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference.models import cpu_kernels
from inference.models.config import DiTConfig
from inference.models.dit import FLOAT32_MODULES, CausalDiT
from inference.models.vae import StreamingDecoder, StreamingEncoder, WanVAE
from inference.tools import memory_plan as mp
from inference.tools.make_tiny_checkpoint import tiny_vae_config
from inference.tools.memory_probe import peak_bytes

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30


def test_a14b_weights_and_kv_follow_from_the_config():
    """DiT 18.54 B parameters = 34.9 GiB in bf16 with its float32 islands, umT5 10.6 GiB, a 832*480 KV window of
    12 frames 14.3 GiB."""
    plan = mp.MemoryPlan(mp.Deployment())
    weights = plan.weights()
    c = DiTConfig.a14b_fast()
    with torch.device("meta"):
        model = CausalDiT(c)
    params = sum(p.numel() for p in model.parameters())
    islands = sum(p.numel() for name in FLOAT32_MODULES for p in getattr(model, name).parameters())
    assert weights["DiT weights"] == 2 * params + 2 * islands and abs(params / 1e9 - 18.54) < 0.01
    assert abs(weights["umT5 weights"] / GIB - 10.58) < 0.01
    session = plan.session(832, 480)
    tokens = (480 // 16) * (832 // 16)  # 1560 per latent frame
    assert session["self-attention KV"] == 2 * c.num_layers * 12 * tokens * c.dim * 2
    assert abs(session["self-attention KV"] / GIB - 14.28) < 0.01
    assert session["prompt K/V"] == 2 * c.num_layers * c.text_len * c.dim * 2


def test_fp8_weights_take_about_half_and_ulysses_fsdp_split_the_rank_share():
    """fp8 about halves the DiT bytes (+ scales, float32 islands); Ulysses 8 splits the KV window, FSDP2 the
    weights, and rank 0 alone holds a decoder cache."""
    bf16 = mp.MemoryPlan(mp.Deployment()).weights()["DiT weights"]
    fp8 = mp.MemoryPlan(mp.Deployment(weights="fp8")).weights()["DiT weights"]
    assert 0.5 < fp8 / bf16 < 0.52
    one = mp.MemoryPlan(mp.Deployment())
    eight = mp.MemoryPlan(mp.Deployment(gpus=8, dit_fsdp=True, t5_fsdp=True))
    assert eight.session(832, 480)["self-attention KV"] * 8 == one.session(832, 480)["self-attention KV"]
    assert eight.weights()["DiT weights"] == one.weights()["DiT weights"] // 8
    assert eight.session(832, 480, rank=1)["VAE decoder cache"] == 0 < eight.session(832, 480)["VAE decoder cache"]
    assert "FSDP2 gathered blocks" in eight.step(832, 480, 1)


def test_more_memory_fits_more_sessions_and_bigger_frames_fewer():
    """A 141 GiB GPU fits more 832*480 sessions than an 80 GiB one; 1280*720 fits fewer than 832*480."""
    small, big = mp.MemoryPlan(mp.Deployment(gpu_mem_gib=80)), mp.MemoryPlan(mp.Deployment(gpu_mem_gib=141))
    assert big.sessions_that_fit(832, 480) > small.sessions_that_fit(832, 480) >= 1
    assert big.sessions_that_fit(1280, 720) < big.sessions_that_fit(832, 480)
    assert small.peak({(832, 480): 2}) > small.usable()  # the second 480p session on 80 GiB is refused


def test_inconsistent_layouts_are_refused_with_the_reason():
    """fp8 with FSDP2, a CPU text encoder with T5 FSDP2 and a Ulysses size not dividing the GPUs name the problem."""
    for bad, words in ((dict(weights="fp8", dit_fsdp=True), "fp8"), (dict(t5_device="cpu", t5_fsdp=True), "CPU"),
                       (dict(gpus=4, ulysses=3), "ulysses")):
        with pytest.raises(ValueError, match=words):
            mp.Deployment(**bad)


def test_cli_prints_a_per_rank_table():
    """`--gpus 8 --dit-fsdp` prints rank 0 and the other ranks side by side, with the sessions that fit."""
    out = subprocess.run([sys.executable, "-m", "inference.tools.memory_plan", "--gpus", "8", "--gpu-mem", "80",
                          "--dit-fsdp", "--t5-fsdp", "--size", "1280*720"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| component | rank 0 | ranks 1..7 |" in out.stdout
    assert "| VAE decoder cache |" in out.stdout and "sessions of 1280*720 that fit:" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "inference.tools.memory_plan", "--size", "800*450"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "800*450" in bad.stderr


def test_readme_holds_the_generated_table():
    """README's 'what fits where' table is exactly `memory_plan --readme` (regenerate it when the plan changes)."""
    assert mp.readme_table() in (ROOT / "README.md").read_text()


def test_vae_cache_bytes_on_meta_equal_a_real_streaming_run():
    """The meta-device cache sizes equal the bytes a real encoder/decoder holds after two chunks."""
    config = tiny_vae_config()
    vae = WanVAE(config).eval()
    decoder, encoder = StreamingDecoder(vae), StreamingEncoder(vae)
    with torch.no_grad():
        for frames in (9, 12):
            decoder.decode_chunk(torch.randn(1, 16, 3, 4, 6))
            encoder.encode_chunk(torch.zeros(1, 3, frames, 32, 48))
    held = [sum(s.numel() * s.element_size() for s in c.slots if isinstance(s, torch.Tensor))
            for c in (decoder.cache, encoder.cache)]
    assert list(mp.vae_cache_bytes(config, 48, 32, 4)) == held


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_planned_dit_activations_match_the_measured_peak(dtype):
    """At a shape the constants were not measured on, one forward's measured peak is within 15% of the plan on
    the float32-scores path, and under it with the bfloat16 attention kernel (which allocates less)."""
    config = DiTConfig.tiny(dim=384, ffn_dim=1036, num_heads=3, num_layers=1, local_attn_size=6, sink_size=3)
    model = CausalDiT(config).to(dtype).eval()
    h, w = 16, 32
    # the CPU's attention path, over the cache's window of 6 frames
    deployment = mp.Deployment(dtype=str(dtype).removeprefix("torch."), direct_attention=True, window=6, sink=3)
    step = mp.MemoryPlan(deployment, mp.ModelShapes(dit=config)).step(w * 8, h * 8, 1)
    planned = step["DiT activations"] + step["attention scores (direct path)"]
    kernel = dtype == torch.bfloat16 and cpu_kernels.load()
    for path in ("float32 scores", "bf16 kernel") if kernel else ("float32 scores",):
        cache = model.new_cache(capacity=1, frame_seqlen=(h // 2) * (w // 2))
        model.set_prompt(cache, 0, torch.randn(8, config.text_dim))
        y, control = torch.randn(1, 20, 3, h, w), torch.randn(1, config.control_channels, 3, h, w)
        with torch.no_grad(), cpu_kernels.disabled() if path == "float32 scores" else contextlib.nullcontext():
            for chunk in range(2):  # fill the window so the measured call attends a full one
                model(torch.randn(1, 16, 3, h, w), y, torch.tensor([500]), control, cache, [3 * chunk])
            x = torch.randn(1, 16, 3, h, w)
            measured = peak_bytes(lambda: model(x, y, torch.tensor([500]), control, cache, [6]), "cpu")
        if path == "float32 scores":
            assert 0.85 < planned / measured < 1.15, (path, planned, measured)
        else:
            assert measured < planned, (path, planned, measured)

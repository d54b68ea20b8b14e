"""`--weights fp8`: float8 e4m3 block weights with per-output-channel scales, close to bf16, through the engine."""

import numpy as np
import torch

from inference.conformance import Fixture
from inference.conformance.dit import RolloutFile, call, new_session
from inference.engine.base import ChunkWork, SessionSpec
from inference.lingbot.engine import LingbotFastEngine
from inference.models.checkpoint import load_dit_checkpoint
from inference.models.fp8 import is_fp8, quantize_blocks, weight_bytes
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint
from tests.fixtures_kit import CAM, fixture_set
# e4m3 keeps 3 mantissa bits: each weight is off by up to 1/16 of itself (about 1.8% rms); the flow after two
# blocks of random-sign errors stays within a few percent (measured 4.0% mean on this fixture).
FP8_FLOW_REL_TOL = 0.08


def load(dtype=torch.bfloat16):
    return load_dit_checkpoint(fixture_set(CAM) / "transformer", device="cpu", dtype=dtype)


def test_block_linears_become_float8_with_one_scale_per_output_channel():
    """Every block linear holds float8_e4m3fn data and a (out, 1) float32 scale; other weights keep bf16."""
    model = load()
    before = weight_bytes(model)
    quantize_blocks(model, model.blocks)
    assert is_fp8(model)
    linears = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    for linear in linears:
        names, _ = linear.weight.__tensor_flatten__()
        parts = {getattr(linear.weight, n).dtype: getattr(linear.weight, n) for n in names}
        out_features, in_features = linear.weight.shape
        assert parts[torch.float8_e4m3fn].shape == (out_features, in_features)
        assert parts[torch.float32].shape == (out_features, 1)
    block_bf16 = sum(2 * m.weight.numel() for m in linears)
    block_fp8 = sum(m.weight.numel() + 4 * m.weight.shape[0] for m in linears)
    assert before - weight_bytes(model) == block_bf16 - block_fp8
    assert model.patch_embedding.weight.dtype == torch.bfloat16 and not is_fp8(load())


def test_fp8_flow_stays_within_fp8_rounding_of_bf16_on_the_fixture():
    """Replaying the fixture's stored DiT calls, the fp8 flow is within 8% (relative L2) of the bf16 flow."""
    run = RolloutFile(Fixture(fixture_set(CAM)))
    models = {"bf16": load(), "fp8": load()}
    quantize_blocks(models["fp8"], models["fp8"].blocks)
    flows = {}
    with torch.no_grad():
        for name, model in models.items():
            cache = new_session(model, run)
            flows[name] = [call(model, cache, run, 0, run[f"chunk0/step{s}/x"], run[f"chunk0/step{s}/t"]).float()
                           for s in range(run.num_steps)]
    for fp8, bf16 in zip(flows["fp8"], flows["bf16"]):
        error = float((fp8 - bf16).norm() / bf16.norm())
        assert 0 < error < FP8_FLOW_REL_TOL


def test_engine_with_fp8_weights_streams_frames_close_to_bf16(tmp_path):
    """A tiny engine loaded with weights='fp8' says so, holds fewer weight bytes, and its first chunk is within
    fp8 rounding of the bf16 engine's (PSNR above 30 dB)."""
    model_dir = make_tiny_checkpoint(tmp_path / "tiny", seed=6)
    frames = {}
    for weights in ("bf16", "fp8"):
        engine = LingbotFastEngine.from_model_dir(model_dir, dtype="bfloat16", weights=weights)
        engine.open_session(SessionSpec(session_id="s", prompt="hills", seed=2, width=48, height=32))
        n = engine.sessions["s"].expected_frames()
        work = ChunkWork(session_id="s", chunk_index=0, poses=np.broadcast_to(np.eye(4), (n, 4, 4)).copy(),
                         keys=np.zeros((n, 8), np.float32))
        frames[weights] = engine.generate([work])[0].frames.astype(np.float64)
        if weights == "fp8":
            assert "fp8 DiT weights" in engine.info().model and is_fp8(engine.models.dit)
            assert engine.memory.plan.d.weights == "fp8"
    mse = np.mean((frames["fp8"] - frames["bf16"]) ** 2)
    assert mse > 0 and 10 * np.log10(255 ** 2 / mse) > 30

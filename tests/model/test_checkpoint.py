"""DiT checkpoint loading (single file, shards) and its errors for broken downloads."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference.models.checkpoint import CheckpointError, load_dit_checkpoint, save_dit_checkpoint
from inference.models.config import DiTConfig
from inference.models.dit import FLOAT32_MODULES, CausalDiT
from inference.models.rope import RotaryTables
from tests.tolerance import assert_reorder_close


@pytest.fixture(scope="module")
def transformer(cam_set):
    return cam_set / "transformer"


@pytest.fixture(scope="module")
def fixture_model(transformer) -> CausalDiT:
    return load_dit_checkpoint(transformer, dtype=torch.float32)


@pytest.fixture(scope="module")
def random_model() -> CausalDiT:
    """A freshly initialised tiny act DiT (text_dim 32), float32."""
    torch.manual_seed(0)
    return CausalDiT(DiTConfig.tiny(text_dim=32, control_type="act")).eval()


def test_fixture_config_json_reads_as_the_tiny_preset(transformer):
    """config.json without text_dim/patch_size/qk_norm/cross_attn_norm yields the reference defaults."""
    assert DiTConfig.from_json(transformer / "config.json") == DiTConfig.tiny()
    big = DiTConfig.a14b_fast()
    assert (big.dim, big.num_layers, big.head_dim, big.control_channels) == (5120, 40, 128, 384)
    assert DiTConfig.tiny(control_type="act").control_channels == 448


def test_fixture_weights_load_exactly_with_rope_tables_rebuilt(fixture_model, transformer):
    """Every stored tensor lands unchanged in the model and the RoPE tables are real (not meta)."""
    stored = load_file(str(transformer / "diffusion_pytorch_model.safetensors"))
    state = fixture_model.state_dict()
    assert set(state) == set(stored)
    assert all(torch.equal(state[name], stored[name]) for name in stored)
    fresh = RotaryTables(fixture_model.config.head_dim)
    assert fixture_model.rope.cos.device.type == "cpu"
    assert torch.equal(fixture_model.rope.cos, fresh.cos) and torch.equal(fixture_model.rope.sin, fresh.sin)


def test_bfloat16_load_keeps_rope_tables_and_float32_islands(random_model, tmp_path):
    """Loading in bfloat16 casts the block weights but keeps the rotary tables, the time embedding, the time
    projection and the head float32, holding the stored float32 values unrounded."""
    save_dit_checkpoint(random_model, tmp_path)
    model = load_dit_checkpoint(tmp_path, dtype=torch.bfloat16)
    assert model.patch_embedding.weight.dtype == model.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert model.rope.cos.dtype == torch.float32
    stored = random_model.state_dict()
    for name, tensor in model.state_dict().items():
        if name.split(".")[0] in FLOAT32_MODULES:
            assert tensor.dtype == torch.float32 and torch.equal(tensor, stored[name]), name


def test_sharded_copy_loads_the_same_weights(random_model, tmp_path):
    """A copy written as 2 shards + index loads back to identical tensors."""
    total = sum(t.numel() * t.element_size() for t in random_model.state_dict().values())
    paths = save_dit_checkpoint(random_model, tmp_path, max_shard_bytes=int(total * 0.6))
    assert [p.name for p in paths] == ["diffusion_pytorch_model-00001-of-00002.safetensors",
                                       "diffusion_pytorch_model-00002-of-00002.safetensors"]
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(random_model.state_dict())
    reloaded = load_dit_checkpoint(tmp_path, dtype=torch.float32)
    for name, tensor in random_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_missing_shard_names_the_file_and_the_download_command(random_model, tmp_path):
    """Deleting one shard gives an error naming that shard and the huggingface-cli command."""
    total = sum(t.numel() * t.element_size() for t in random_model.state_dict().values())
    save_dit_checkpoint(random_model, tmp_path, max_shard_bytes=int(total * 0.4))
    victim = sorted(tmp_path.glob("*-of-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name) as info:
        load_dit_checkpoint(tmp_path)
    assert "huggingface-cli download robbyant/lingbot-world-fast" in str(info.value)


def test_missing_and_unexpected_tensors_are_named(random_model, tmp_path):
    """A weights file lacking one tensor and holding a stray one names both in the error."""
    save_dit_checkpoint(random_model, tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    del state["blocks.1.cross_attn.k.weight"]
    state["blocks.9.stray"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \[blocks.1.cross_attn.k.weight\]") as info:
        load_dit_checkpoint(tmp_path)
    assert "blocks.9.stray" in str(info.value)


def test_missing_config_and_missing_weights_are_reported(random_model, tmp_path):
    """An empty folder names config.json; a folder with only config.json names the weights files."""
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_dit_checkpoint(tmp_path)
    save_dit_checkpoint(random_model, tmp_path / "full")
    shutil.copy(tmp_path / "full" / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="neither diffusion_pytorch_model.safetensors nor"):
        load_dit_checkpoint(tmp_path)


def test_random_tiny_checkpoint_round_trips_through_save_and_load(random_model, tmp_path):
    """A freshly initialised model saved and reloaded computes the same flow prediction (to float32 rounding)."""
    save_dit_checkpoint(random_model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["text_dim"] == 32
    loaded = load_dit_checkpoint(tmp_path, dtype=torch.float32)
    outs = []
    for m in (random_model, loaded):
        cache = m.new_cache(capacity=1, frame_seqlen=6, kv_frames=3)
        m.set_prompt(cache, 0, torch.ones(2, 32))
        with torch.no_grad():
            outs.append(m(torch.ones(1, 16, 3, 4, 6), torch.ones(1, 20, 3, 4, 6), torch.tensor([999]),
                          torch.ones(1, 448, 3, 4, 6), cache, start_frames=[0]))
    # Same weights; kernels may sum in another order on the (mmap-aligned) loaded buffers.
    config = random_model.config
    assert_reorder_close(outs[1], outs[0], terms=config.num_layers * max(config.dim, config.ffn_dim), what="flow")

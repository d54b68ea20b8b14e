"""umT5 encoder: fixture conformance, relative-position buckets, TextEncoder trimming and cache, loader errors."""

from __future__ import annotations

import pytest
import torch

from inference.conformance import Fixture
from inference.models.t5 import T5_CHECKPOINT_FILE, T5Config, T5Encoder, T5RelativeEmbedding, TextEncoder, load_t5
from inference.models.tokenizer import PromptTokenizer, write_tiny_tokenizer
from inference.models.weights import CheckpointFileMissing
from tests.tolerance import assert_reorder_close

TINY = dict(vocab_size=256, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, text_len=16)


def random_encoder(seed: int = 0) -> T5Encoder:
    torch.manual_seed(seed)
    model = T5Encoder(T5Config(**TINY)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return PromptTokenizer(write_tiny_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=256), text_len=16)


def test_t5_conformance_group_passes(each_set):
    """Every T5 check of the fixture set is within atol/rtol 1e-4."""
    from inference.conformance import t5 as group

    checks = list(group.run(Fixture(each_set)))
    names = {c.name for c in checks}
    assert {"t5/context_full", "t5/context_0", "t5/context_1"} <= names
    failed = [(c.name, c.max_abs_err) for c in checks if not c.passed]
    assert not failed, failed


def test_relative_position_buckets_follow_t5_layout():
    """Same position -> bucket 0, earlier keys use the low half, later keys the high half, far ones saturate."""
    emb = T5RelativeEmbedding(32, 4, 128)
    rel = torch.tensor([0, -1, 1, -7, 8, -200, 200])
    assert emb._bucket(rel).tolist() == [0, 1, 17, 7, 24, 15, 31]


def test_text_encoder_trims_each_prompt_to_its_tokens(tokenizer):
    """Each context has one row per real token (</s> included) and equals the padded batch output's rows."""
    encoder = TextEncoder(random_encoder(), tokenizer)
    prompts = ["a sunny village", "the camera walks forward through a dark forest"]
    contexts = encoder.encode(prompts)
    ids, mask = tokenizer(prompts)
    full = encoder.model(ids, mask)
    for b, ctx in enumerate(contexts):
        n = int(mask[b].sum())
        assert ctx.shape == (n, 32)
        torch.testing.assert_close(ctx, full[b, :n], atol=0, rtol=0)


def test_padding_does_not_change_a_prompts_encoding(tokenizer):
    """A prompt encoded alone or next to a longer prompt gives the same context (pad keys are masked)."""
    alone = TextEncoder(random_encoder(), tokenizer).encode(["a sunny village"])[0]
    batched = TextEncoder(random_encoder(), tokenizer).encode(["a sunny village", "walking along the beach"])[0]
    assert_reorder_close(batched, alone, terms=TINY["num_layers"] * TINY["dim_ffn"], what="batched context")


def test_prompt_cache_hit_does_not_recompute(tokenizer):
    """Encoding a cached prompt again runs no forward pass and returns the cached tensor."""
    encoder = TextEncoder(random_encoder(), tokenizer, cache_size=2)
    calls = []
    encoder.model.register_forward_hook(lambda *args: calls.append(1))
    first = encoder.encode(["a sunny village"])[0]
    again = encoder.encode(["a  sunny village "])[0]  # same prompt after whitespace cleaning
    assert len(calls) == 1 and again is first
    assert (encoder.hits, encoder.misses) == (1, 1)


def test_prompt_cache_is_bounded_lru(tokenizer):
    """With room for two prompts, the least recently used one is evicted and later recomputed."""
    encoder = TextEncoder(random_encoder(), tokenizer, cache_size=2)
    encoder.encode(["a"])
    encoder.encode(["b"])
    encoder.encode(["a"])  # a is now most recent
    encoder.encode(["c"])  # evicts b
    assert encoder.cached_prompts() == ["a", "c"]
    misses = encoder.misses
    encoder.encode(["b"])
    assert encoder.misses == misses + 1


def test_missing_t5_checkpoint_says_download_incomplete(tmp_path):
    """A checkpoint folder without the umT5 file raises an error naming the file, 'incomplete' and the command."""
    with pytest.raises(CheckpointFileMissing) as info:
        TextEncoder.from_checkpoint(tmp_path, device="cpu", config=T5Config(**TINY))
    message = str(info.value)
    assert str(tmp_path / T5_CHECKPOINT_FILE) in message and "incomplete" in message
    assert f"huggingface-cli download robbyant/lingbot-world-base-cam --local-dir {tmp_path}" in message


def test_text_encoder_from_checkpoint_folder(tmp_path):
    """A folder laid out like the checkpoint (umT5 .pth + google/umt5-xxl) loads into a working TextEncoder."""
    model = random_encoder()
    torch.save(model.state_dict(), tmp_path / T5_CHECKPOINT_FILE)
    write_tiny_tokenizer(tmp_path / "google" / "umt5-xxl", vocab_size=256)
    encoder = TextEncoder.from_checkpoint(tmp_path, device="cpu", dtype=torch.float32, config=T5Config(**TINY))
    ctx = encoder.encode(["a cozy room"])[0]
    assert ctx.dtype == torch.float32 and ctx.shape[1] == 32 and torch.isfinite(ctx).all()


def test_config_from_json_rejects_unknown_settings(tmp_path):
    """A t5_config.json with a setting the encoder does not know is refused, naming it."""
    path = tmp_path / "t5_config.json"
    path.write_text('{"umt5_xxl_overrides": {"dim": 32, "n_experts": 4}}')
    with pytest.raises(ValueError, match="n_experts"):
        T5Config.from_json(path)


def test_load_t5_bf16_is_close_to_fp32(cam_set):
    """The fixture encoder loaded in bf16 stays within 0.1 of the fp32 golden context."""
    fixture = Fixture(cam_set)
    config = T5Config.from_json(fixture.path("t5/t5_config.json"))
    model = load_t5(fixture.path("t5/t5.pth"), config, "cpu", torch.bfloat16)
    g = fixture.tensors("t5/goldens.safetensors")
    out = model(g["ids"], g["mask"])
    assert out.dtype == torch.bfloat16
    assert (out.float() - g["context_full"]).abs().max() < 0.1

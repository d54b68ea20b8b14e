"""Wan2.1 VAE: fixture conformance, streaming == one-shot, bf16, uint8 frames and loader errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inference.conformance import Fixture
from inference.models.vae import StreamingDecoder, StreamingEncoder, VAEConfig, WanVAE, load_vae, video_to_uint8
from inference.models.weights import CheckpointFileMissing, CheckpointKeyMismatch
from tests.tolerance import assert_reorder_close


def tiny_vae(seed: int = 0) -> WanVAE:
    """A 4-channel VAE with attention in the middle and at half resolution, random weights."""
    config = VAEConfig(dim=4, dim_mult=[1, 2, 2, 2], attn_scales=[0.5])
    vae = WanVAE(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            centre = 1.0 if name.endswith("gamma") else 0.0  # norm scales around 1, weights around 0
            p.copy_(centre + 0.3 * torch.randn(p.shape, generator=gen))
    return vae


def conv_terms(net: nn.Module) -> int:
    """Products summed along a path through `net`'s 3-D convolutions (kernel x input channels, per layer)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    return sum(m.in_channels * m.kernel_size[0] * m.kernel_size[1] * m.kernel_size[2] for m in convs)


def test_vae_conformance_group_passes(each_set):
    """Every VAE check of each fixture set is within the README tolerance."""
    from inference.conformance import vae as group

    checks = list(group.run(Fixture(each_set)))
    assert len(checks) >= 7
    failed = [(c.name, c.max_abs_err) for c in checks if not c.passed]
    assert not failed, failed


@pytest.mark.parametrize("sizes", [[1, 2, 3], [3, 3, 3]])
@pytest.mark.parametrize("per_call", [1, 2])
def test_chunked_decode_equals_full_decode(sizes, per_call):
    """Decoding latents chunk by chunk through one StreamingDecoder gives the one-shot decode."""
    vae = tiny_vae()
    latents = torch.randn(1, 16, sum(sizes), 2, 3, generator=torch.Generator().manual_seed(1))
    full = vae.decode(latents)
    assert full.shape == (1, 3, 1 + 4 * (sum(sizes) - 1), 16, 24)
    decoder = StreamingDecoder(vae, latent_frames_per_call=per_call)
    parts = [decoder.decode_chunk(c) for c in latents.split(sizes, dim=2)]
    expected_frames = [StreamingDecoder.video_frames_for(n, first_chunk=i == 0) for i, n in enumerate(sizes)]
    assert [p.shape[2] for p in parts] == expected_frames
    assert_reorder_close(torch.cat(parts, dim=2), full, terms=conv_terms(vae.decoder), what="chunked decode")


def test_decoder_reset_starts_a_new_video():
    """After reset() the decoder treats the next latent frame as a first frame again."""
    vae = tiny_vae()
    latents = torch.randn(1, 16, 2, 2, 3, generator=torch.Generator().manual_seed(2))
    decoder = StreamingDecoder(vae)
    first = decoder.decode_chunk(latents)
    decoder.decode_chunk(latents)
    decoder.reset()
    torch.testing.assert_close(decoder.decode_chunk(latents), first, atol=0, rtol=0)


def test_streaming_encode_equals_one_shot_encode():
    """Encoding [first frame + 4 frames] then 8 then 4 frames equals encoding the whole video."""
    vae = tiny_vae()
    video = torch.rand(2, 3, 1 + 4 * 4, 16, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    full = vae.encode(video)
    assert full.shape == (2, 16, 5, 2, 3)
    encoder = StreamingEncoder(vae)
    parts = [encoder.encode_chunk(video[:, :, a:b]) for a, b in [(0, 5), (5, 13), (13, 17)]]
    assert [p.shape[2] for p in parts] == [2, 2, 1]
    assert_reorder_close(torch.cat(parts, dim=2), full, terms=conv_terms(vae.encoder), what="chunked encode")


def test_streaming_encode_rejects_misaligned_chunks():
    """A chunk whose frame count does not fit the 1 + 4k / 4k rule is refused with its shape."""
    encoder = StreamingEncoder(tiny_vae())
    with pytest.raises(ValueError, match=r"1 \+ 4k"):
        encoder.encode_chunk(torch.zeros(1, 3, 4, 16, 24))
    encoder.encode_chunk(torch.zeros(1, 3, 1, 16, 24))
    with pytest.raises(ValueError, match="4k frames"):
        encoder.encode_chunk(torch.zeros(1, 3, 5, 16, 24))


def test_bf16_decode_is_close_to_fp32(cam_set):
    """A bf16 VAE decodes the fixture latents to within 0.25 max / 0.03 mean of the fp32 golden video."""
    fixture = Fixture(cam_set)
    config = VAEConfig.from_json(fixture.path("vae/vae_config.json"))
    vae = load_vae(fixture.path("vae/vae.pth"), "cpu", torch.bfloat16, config=config)
    g = fixture.tensors("vae/goldens.safetensors")
    out = vae.decode(g["stream/latent"][None, :, :2])
    assert out.dtype == torch.bfloat16
    err = (out.float()[0] - g["stream/chunk0/video_raw"][:, :5]).abs()
    assert err.max() < 0.25 and err.mean() < 0.03, (err.max().item(), err.mean().item())


def test_video_to_uint8_maps_range_and_layout():
    """Video in [-1, 1] becomes channels-last uint8 with -1 -> 0, 0 -> 128, 1 -> 255, outside clamped."""
    video = torch.zeros(3, 2, 4, 5)
    video[0, 0] = -1.0
    video[1, 0] = 1.0
    video[2, 1] = 3.0
    video[0, 1] = -7.0
    frames = video_to_uint8(video)
    assert frames.dtype == torch.uint8 and frames.shape == (2, 4, 5, 3)
    assert frames[0, :, :, 0].eq(0).all() and frames[0, :, :, 1].eq(255).all() and frames[0, :, :, 2].eq(128).all()
    assert frames[1, :, :, 2].eq(255).all() and frames[1, :, :, 0].eq(0).all()
    assert video_to_uint8(video[None]).shape == (1, 2, 4, 5, 3)


def test_load_vae_missing_file_names_file_and_download(tmp_path):
    """A missing VAE file raises an error naming the path and the download command."""
    path = tmp_path / "Wan2.1_VAE.pth"
    with pytest.raises(CheckpointFileMissing) as info:
        load_vae(path)
    message = str(info.value)
    assert str(path) in message
    assert f"huggingface-cli download robbyant/lingbot-world-base-cam --local-dir {tmp_path}" in message


def test_load_vae_key_mismatch_lists_keys(tmp_path):
    """A state dict with a missing and an unexpected key is refused, listing both and the file."""
    vae = tiny_vae()
    state = vae.state_dict()
    state.pop("decoder.head.2.bias")
    state["decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "vae.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointKeyMismatch) as info:
        load_vae(path, config=vae.config)
    message = str(info.value)
    assert "decoder.head.2.bias" in message and "decoder.extra.weight" in message and str(path) in message


def test_load_vae_round_trips_weights(tmp_path):
    """A saved state dict loads strictly and decodes exactly like the model it came from."""
    vae = tiny_vae()
    path = tmp_path / "vae.pth"
    torch.save(vae.state_dict(), path)
    loaded = load_vae(path, config=vae.config)
    latents = torch.randn(1, 16, 2, 2, 3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(loaded.decode(latents), vae.decode(latents), atol=0, rtol=0)

"""What a session holds: pool growth without a second cache copy, an exact cheap condition steady state, device rays."""

import gc
import weakref

import numpy as np
import pytest
import torch

from inference.controls import CameraRig
from inference.lingbot.session import ConditionStream
from inference.lingbot.slots import SlotPool
from inference.models.camera import StreamingCamera, StreamingCameraConfig, folded_directions_on
from inference.models.config import DiTConfig
from inference.models.dit import CausalDiT
from inference.models.vae import WanVAE
from inference.tools.make_tiny_checkpoint import tiny_vae_config
from tests.tolerance import assert_reorder_close


def test_growing_a_pool_frees_the_old_cache_before_the_bigger_one_is_allocated():
    """When a third session needs a slot, the two held slots survive the growth, and no device copy of them is
    alive when the bigger cache is allocated."""
    torch.manual_seed(0)
    dit = CausalDiT(DiTConfig.tiny(num_layers=2)).eval()
    pool = SlotPool(dit, frame_seqlen=4, window=6, sink=3)
    slots = [pool.acquire(), pool.acquire()]
    for slot in slots:
        for store in (pool.cache.self_kv.k, pool.cache.self_kv.v, pool.cache.text.k, pool.cache.text.v):
            store[:, slot].normal_()
        pool.cache.self_kv.global_end[slot] = pool.cache.self_kv.local_end[slot] = 8 + slot
        pool.cache.text.ready[slot] = True
    before = {(part, name): getattr(getattr(pool.cache, part), name)[:, :2].clone()
              for part in ("self_kv", "text") for name in ("k", "v")}
    old_k = weakref.ref(pool.cache.self_kv.k)
    alive_at_allocation = []
    allocate = dit.new_cache

    def watching_new_cache(**kwargs):
        gc.collect()
        alive_at_allocation.append(old_k() is not None)
        return allocate(**kwargs)

    dit.new_cache = watching_new_cache
    third = pool.acquire()
    assert alive_at_allocation == [False] and pool.capacity == 3 and third == 2
    for (part, name), held in before.items():
        torch.testing.assert_close(getattr(getattr(pool.cache, part), name)[:, :2], held, rtol=0, atol=0)
    assert pool.cache.self_kv.global_end[:2] == [8, 9] and pool.cache.text.ready == [True, True, False]


def test_condition_steady_state_is_exact_and_drops_the_encoder():
    """A session's condition stops encoding once the encoder cache is a fixed point, and every later chunk's
    condition equals what encoding on would have given, bit for bit."""
    torch.manual_seed(0)
    vae = WanVAE(tiny_vae_config()).eval()
    image = torch.rand(1, 3, 1, 32, 48) * 2 - 1
    cheap, reference = ConditionStream(vae, image, 3), ConditionStream(vae, image, 3)
    reference.encoder.cache.take_changed = lambda: True  # never declares a steady state: always encodes
    steady_at = None
    for chunk in range(12):
        y, want = cheap.next_chunk(), reference.next_chunk()
        torch.testing.assert_close(y, want, rtol=0, atol=0)
        if steady_at is None and cheap.steady is not None:
            steady_at = chunk
    assert steady_at is not None and steady_at < 10
    assert cheap.encoder is None and reference.encoder is not None


def walk_and_turn(frames: int) -> tuple[np.ndarray, np.ndarray]:
    keys = np.zeros((frames, 8), np.float32)
    keys[:, 0], keys[frames // 3:, 5], keys[frames // 2:, 1] = 1.0, 1.0, 0.5  # W, then yaw, then half A
    return np.concatenate([np.eye(4)[None], CameraRig().advance(keys)])[:frames], keys


@pytest.mark.parametrize("control_type", ["cam", "act"])
def test_device_rays_equal_the_host_fold(control_type):
    """Rays rotated on the device give the host path's condition, chunk after chunk: rotated rays to the rounding
    of a 3-term sum in another order, origins and W/A/S/D planes exactly."""
    config = StreamingCameraConfig(height=64, width=96, control_type=control_type)
    host, device = StreamingCamera(config), StreamingCamera(config)
    poses, keys = walk_and_turn(9 + 12 * 4)
    rays = slice(0, 192) if control_type == "act" else slice(192, 384)
    planes = slice(192, 448) if control_type == "act" else slice(0, 192)
    start = 0
    while start + host.expected_frames() <= len(poses):
        end = start + host.expected_frames()
        want = host.chunk(poses[start:end], keys[start:end])
        got = device.chunk_on(poses[start:end], keys[start:end], torch.device("cpu"))
        assert got.shape == want.shape and got.dtype == torch.float32
        assert_reorder_close(got[0, rays], want[0, rays], terms=3, what="rotated ray directions")
        np.testing.assert_array_equal(got[0, planes].numpy(), want[0, planes])
        start = end
    assert start == len(poses)
    directions = folded_directions_on(64, 96, tuple(config.intrinsics), "cpu")
    assert directions is folded_directions_on(64, 96, tuple(config.intrinsics), "cpu")  # one per size and device

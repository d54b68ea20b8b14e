"""FSDP2 (`fully_shard`) of the DiT and T5 encoder, one unit per block, applied from outside the model code."""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

from inference.distributed.context import ParallelContext
from inference.models.dit import CausalDiT
from inference.models.t5 import T5Encoder


# A block's camera layers (cam and act models): applied by `camera_modulation`, outside the block's forward.
CAMERA_LAYERS = ("cam_injector_layer1", "cam_injector_layer2", "cam_scale_layer", "cam_shift_layer")


def world_mesh(ctx: ParallelContext) -> DeviceMesh:
    return init_device_mesh(ctx.device.type, (ctx.world_size,))


def shard_dit(model: CausalDiT, ctx: ParallelContext) -> CausalDiT:
    """Shard every DiT block's parameters over all ranks (gathered per block while it runs).

    `set_prompt` reads the cross-attention projections and the text
    embedding outside `forward`, so those methods are registered to unshard
    their parameters as well. The camera layers of each block run once per
    chunk, before the blocks (`CameraInput.input_for` -> `camera_modulation`),
    so they are a unit of their own: gathered for that pass alone, never
    with the rest of the block; `embed_control` and `time_condition` (a
    pipeline keeps each timestep's condition) run outside `forward` too.
    """
    if not ctx.distributed:
        return model
    mesh = world_mesh(ctx)
    for block in model.blocks:
        fully_shard(block.cross_attn, mesh=mesh)
        register_fsdp_forward_method(block.cross_attn, "project_context")
        camera = [getattr(block, name) for name in CAMERA_LAYERS if hasattr(block, name)]
        if camera:
            fully_shard(camera, mesh=mesh)
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    register_fsdp_forward_method(model, "set_prompt")
    register_fsdp_forward_method(model, "embed_control")
    register_fsdp_forward_method(model, "time_condition")
    return model


def shard_t5(model: T5Encoder, ctx: ParallelContext) -> T5Encoder:
    """Shard every T5 block's parameters over all ranks (the embedding and final norm at the root)."""
    if not ctx.distributed:
        return model
    mesh = world_mesh(ctx)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model

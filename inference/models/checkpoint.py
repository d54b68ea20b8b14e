"""Load and save the DiT in the diffusers layout (config.json + one or sharded safetensors files)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from inference.models.config import DiTConfig
from inference.models.dit import CausalDiT

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
PROGRESS_BYTES = 1 << 30  # show a progress bar from 1 GiB on


class CheckpointError(RuntimeError):
    """The checkpoint folder is missing files or tensors, or they do not fit the config."""


def download_hint(directory: Path) -> str:
    """The command that (re)downloads the DiT folder (MODEL.md layout: <MODEL_DIR>/lingbot-world-base-cam/lingbot_world_fast)."""
    return f"download it again with: huggingface-cli download robbyant/lingbot-world-fast --local-dir {directory}"


def shard_name(index: int, total: int) -> str:
    return f"diffusion_pytorch_model-{index:05d}-of-{total:05d}.safetensors"


def shard_map(directory: Path) -> dict[str, Path]:
    """Tensor name -> file holding it, from the index json or the single weights file."""
    index_path, single_path = directory / INDEX_NAME, directory / WEIGHTS_NAME
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index_path} is not a safetensors index ({exc}); {download_hint(directory)}") from exc
        files = {name: directory / file for name, file in weight_map.items()}
        missing = sorted({p.name for p in files.values() if not p.is_file()})
        if missing:
            raise CheckpointError(f"{directory}: shard file(s) {missing} listed in {INDEX_NAME} are missing "
                                  f"(partial download?); {download_hint(directory)}")
        return files
    if single_path.is_file():
        with safe_open(str(single_path), framework="pt") as f:
            return {name: single_path for name in f.keys()}
    raise CheckpointError(f"{directory}: neither {WEIGHTS_NAME} nor {INDEX_NAME} found; {download_hint(directory)}")


def check_names(model: CausalDiT, files: dict[str, Path], directory: Path) -> None:
    """Raise naming every missing or unexpected tensor before anything is loaded."""
    expected = set(model.state_dict().keys())
    missing, unexpected = sorted(expected - set(files)), sorted(set(files) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensor(s) {clip(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) {clip(unexpected)}")
        raise CheckpointError(f"{directory} does not match its config.json ({model.config.control_type}, "
                              f"{model.config.num_layers} layers): {'; '.join(parts)}; {download_hint(directory)}")


def clip(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def load_dit_checkpoint(directory: str | Path, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.bfloat16, progress: bool | None = None) -> CausalDiT:
    """Build the DiT on the meta device and fill it shard by shard, straight onto `device` in `dtype`
    (time embedding, time projection and head in float32: `CausalDiT.storage_dtype`).

    Each tensor is read lazily from its safetensors file, cast, and assigned
    in place of the meta parameter, so the weights exist once on the target.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} not found; {download_hint(directory)}")
    config = DiTConfig.from_json(config_path)
    with torch.device("meta"):
        model = CausalDiT(config)
    files = shard_map(directory)
    check_names(model, files, directory)
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    bar = make_bar(sum(p.stat().st_size for p in by_file), progress)
    device = torch.device(device)
    for path, names in sorted(by_file.items()):
        load_file_into(model, path, names, device, dtype, bar)
    if bar is not None:
        bar.update(bar.total - bar.n)  # the files' json headers are not tensor bytes
        bar.close()
    model.rebuild_buffers(device)
    return model.eval().requires_grad_(False)


def load_file_into(model: CausalDiT, path: Path, names: Iterable[str], device: torch.device,
                   dtype: torch.dtype, bar=None) -> None:
    """Assign one file's tensors into the model, checking each shape against the config."""
    expected = model.state_dict()
    loaded = {}
    # safetensors reads straight to CUDA when asked; other devices go through host memory tensor by tensor.
    read_device = str(device) if device.type in ("cpu", "cuda") else "cpu"
    with safe_open(str(path), framework="pt", device=read_device) as f:
        for name in names:
            tensor = f.get_tensor(name)
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise CheckpointError(f"{path.name}: {name} has shape {tuple(tensor.shape)}, the config "
                                      f"expects {tuple(expected[name].shape)}; config.json and weights disagree")
            if bar is not None:
                bar.update(tensor.numel() * tensor.element_size())
            target = model.storage_dtype(name, dtype) if tensor.is_floating_point() else tensor.dtype
            loaded[name] = tensor.to(device=device, dtype=target)
        model.load_state_dict(loaded, strict=False, assign=True)


def make_bar(total_bytes: int, progress: bool | None):
    if progress is False or (progress is None and total_bytes < PROGRESS_BYTES):
        return None
    from tqdm import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="loading DiT")


def save_dit_checkpoint(model: CausalDiT, directory: str | Path, max_shard_bytes: int | None = None) -> list[Path]:
    """Write config.json and the weights (one file, or shards + index when over max_shard_bytes)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(model.config.to_json_dict(), indent=2, sort_keys=True) + "\n")
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    groups = split_into_shards(state, max_shard_bytes)
    if len(groups) == 1:
        path = directory / WEIGHTS_NAME
        save_file(groups[0], str(path), metadata={"format": "pt"})
        return [path]
    paths, weight_map = [], {}
    for i, group in enumerate(groups, start=1):
        path = directory / shard_name(i, len(groups))
        save_file(group, str(path), metadata={"format": "pt"})
        paths.append(path)
        weight_map.update({name: path.name for name in group})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return paths


def split_into_shards(state: dict[str, torch.Tensor], max_shard_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    """Greedy split in name order; a tensor larger than the limit gets a shard of its own."""
    if max_shard_bytes is None:
        return [state]
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(state):
        nbytes = state[name].numel() * state[name].element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = state[name]
        size += nbytes
    return groups

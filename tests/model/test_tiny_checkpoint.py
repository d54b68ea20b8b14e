"""The tiny-checkpoint tool writes the real download layout, and the model loaders read it back."""

import json

import numpy as np
import torch

from inference.engine.base import ChunkWork, SessionSpec
from inference.lingbot.engine import LingbotFastEngine
from inference.lingbot.layout import DIT_DIR, load_models
from inference.models.checkpoint import INDEX_NAME, WEIGHTS_NAME, load_dit_checkpoint
from inference.tools.make_tiny_checkpoint import main, make_tiny_checkpoint


def test_single_and_sharded_folders_load_to_the_same_models(tmp_path):
    """One-file and two-shard folders of one seed load to identical DiT weights, and the sidecars set the shapes."""
    single = make_tiny_checkpoint(tmp_path / "single", seed=4)
    sharded = make_tiny_checkpoint(tmp_path / "sharded", seed=4, shards=2)
    assert (single / DIT_DIR / WEIGHTS_NAME).is_file() and not (single / DIT_DIR / INDEX_NAME).exists()
    index = json.loads((sharded / DIT_DIR / INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) == 2
    for name in ("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/tokenizer.json"):
        assert (single / name).is_file()
    a = load_dit_checkpoint(single / DIT_DIR, dtype=torch.float32).state_dict()
    b = load_dit_checkpoint(sharded / DIT_DIR, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    models = load_models(single, device=torch.device("cpu"), dtype=torch.float32)
    assert models.vae.config.dim == 4 and models.text.model.config.dim == models.dit.config.text_dim == 32
    assert models.sizes.sizes == ["64*48", "48*32"] and models.sizes.default_size == "64*48"
    context = models.text.encode(["a castle on a hill"])[0]
    assert context.shape[1] == 32 and 1 <= context.shape[0] <= models.dit.config.text_len


def test_seed_decides_the_weights(tmp_path):
    """The same seed writes identical DiT weights and another seed different ones."""
    def weights(name, seed):
        folder = make_tiny_checkpoint(tmp_path / name, seed=seed)
        return load_dit_checkpoint(folder / DIT_DIR, dtype=torch.float32).state_dict()
    a, b, c = weights("a", 1), weights("b", 1), weights("c", 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.self_attn.q.weight"], c["blocks.0.self_attn.q.weight"])


def test_cli_writes_an_act_checkpoint_with_its_window_that_the_engine_runs(tmp_path):
    """`--control-type act --window 9 --sink 3` gives a checkpoint whose engine streams WASD-controlled chunks."""
    assert main([str(tmp_path / "act"), "--control-type", "act", "--window", "9", "--sink", "3",
                 "--sizes", "48*32"]) == 0
    config = json.loads((tmp_path / "act" / DIT_DIR / "config.json").read_text())
    assert (config["control_type"], config["local_attn_size"], config["sink_size"]) == ("act", 9, 3)
    engine = LingbotFastEngine.from_model_dir(tmp_path / "act")
    assert (engine.window, engine.sink) == (9, 3) and engine.info().sizes == ["48*32"]
    engine.open_session(SessionSpec(session_id="s", prompt="forest", seed=0, width=48, height=32))
    keys = np.zeros((9, 8), np.float32)
    keys[:, 0] = 1.0  # W held
    poses = np.broadcast_to(np.eye(4), (9, 4, 4)).copy()
    poses[:, 2, 3] = 0.05 * np.arange(9)
    out = engine.generate([ChunkWork(session_id="s", chunk_index=0, poses=poses, keys=keys)])[0]
    assert out.frames.shape == (9, 32, 48, 3)

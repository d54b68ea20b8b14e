"""DiT conformance: replay every stored DiT call of rollout.safetensors, then free-running rollouts.

The second rollout takes its camera condition from the set's action string
(our camera path, in the set's control type) instead of the stored one, so
keys -> condition -> DiT -> latents is checked end to end.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from inference.conformance import Check, Fixture, compare
from inference.conformance.camera import condition_from_keys
from inference.models.checkpoint import load_dit_checkpoint
from inference.models.dit import CausalDiT
from inference.models.kv_cache import DiTCache
from inference.models.sampler import FlowMatchSampler

CALL_TOL = dict(atol=1e-4, rtol=1e-4)  # single DiT calls fed the stored inputs
ROLLOUT_TOL = dict(atol=1e-3, rtol=1e-3)  # quantities accumulated over a free-running rollout


class RolloutFile:
    """The rollout tensors plus the sizes the reference derived from them."""

    def __init__(self, fixture: Fixture):
        self.t = fixture.tensors("rollout.safetensors")
        self.num_chunks = int(self.t["num_chunks"])
        self.chunk_size = int(self.t["chunk_size"])
        self.frame_seqlen = int(self.t["frame_seqlen"])
        self.kv_size = int(self.t["kv_size"])
        self.max_attention_size = int(self.t["max_attention_size"])
        self.num_steps = int(self.t["timesteps"].numel())

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.t[key]

    def start_frame(self, chunk: int) -> int:
        return int(self.t[f"chunk{chunk}/current_start"]) // self.frame_seqlen


def new_session(model: CausalDiT, run: RolloutFile) -> DiTCache:
    """One slot with the fixture's cache geometry and the stored context as its prompt."""
    cache = model.new_cache(capacity=1, frame_seqlen=run.frame_seqlen, kv_frames=run.kv_size // run.frame_seqlen,
                            max_attention_tokens=run.max_attention_size)
    model.set_prompt(cache, 0, run["context"])
    return cache


def call(model: CausalDiT, cache: DiTCache, run: RolloutFile, chunk: int, x: torch.Tensor,
         t: torch.Tensor, control: torch.Tensor | None = None) -> torch.Tensor:
    """One DiT call of the rollout for chunk `chunk` with latent x (16, F, h, w) and timestep t (1,).

    control (1, C, F, h, w) defaults to the chunk's stored camera condition.
    """
    control = run[f"chunk{chunk}/c2ws_plucker_emb"] if control is None else control
    out = model(x[None], run[f"chunk{chunk}/y"][None], t, control, cache, start_frames=[run.start_frame(chunk)])
    return out[0]


def schedule_checks(sampler: FlowMatchSampler, run: RolloutFile) -> Iterator[Check]:
    yield compare("dit/scheduler/timesteps_all", sampler.timesteps_all, run["scheduler/timesteps_all"], atol=0, rtol=0)
    yield compare("dit/scheduler/sigmas_all", sampler.sigmas_all, run["scheduler/sigmas_all"], atol=0, rtol=0)
    yield compare("dit/scheduler/timesteps", sampler.timesteps, run["timesteps"], atol=0, rtol=0)
    stored_x0 = [int(run[f"chunk0/step{s}/x0_sigma_index"]) for s in range(run.num_steps)]
    stored_renoise = [int(run[f"chunk0/step{s}/add_noise_sigma_index"]) for s in range(run.num_steps - 1)]
    yield compare("dit/scheduler/x0_sigma_index", torch.tensor(sampler.x0_sigma_index),
                  torch.tensor(stored_x0), atol=0, rtol=0)
    yield compare("dit/scheduler/add_noise_sigma_index", torch.tensor(sampler.renoise_sigma_index),
                  torch.tensor(stored_renoise), atol=0, rtol=0)


def replay_checks(model: CausalDiT, sampler: FlowMatchSampler, run: RolloutFile) -> Iterator[Check]:
    """Feed every stored call its stored inputs; the cache holds what our own earlier calls wrote."""
    cache = new_session(model, run)
    kv = cache.self_kv
    for c in range(run.num_chunks):
        got: dict[str, list[torch.Tensor]] = {k: [] for k in ("noise_pred", "x0", "x_next", "indices")}
        want: dict[str, list[torch.Tensor]] = {k: [] for k in got}
        for s in range(run.num_steps):
            key = f"chunk{c}/step{s}"
            x = run[f"{key}/x"]
            flow = call(model, cache, run, c, x, run[f"{key}/t"])
            x0 = sampler.to_x0(s, x, flow)
            got["noise_pred"].append(flow)
            want["noise_pred"].append(run[f"{key}/noise_pred"])
            got["x0"].append(x0)
            want["x0"].append(run[f"{key}/x0"])
            if s < run.num_steps - 1:
                got["x_next"].append(sampler.renoise(s + 1, x0, run[f"{key}/add_noise_noise"]))
                want["x_next"].append(run[f"{key}/x_next"])
            got["indices"].append(torch.tensor([kv.global_end[0], kv.local_end[0]]))
            want["indices"].append(torch.cat([run[f"{key}/kv_global_end_index"], run[f"{key}/kv_local_end_index"]]))
        update = call(model, cache, run, c, run[f"chunk{c}/update/x"], run[f"chunk{c}/update/t"])
        got["indices"].append(torch.tensor([kv.global_end[0], kv.local_end[0]]))
        want["indices"].append(torch.cat([run[f"chunk{c}/update/kv_global_end_index"],
                                          run[f"chunk{c}/update/kv_local_end_index"]]))
        for name in ("noise_pred", "x0", "x_next"):
            yield compare(f"dit/replay/chunk{c}/{name}", torch.stack(got[name]), torch.stack(want[name]), **CALL_TOL,
                          note=f"{len(got[name])} steps")
        yield compare(f"dit/replay/chunk{c}/update_out", update, run[f"chunk{c}/update/out"], **CALL_TOL)
        yield compare(f"dit/replay/chunk{c}/kv_indices", torch.stack(got["indices"]), torch.stack(want["indices"]),
                      atol=0, rtol=0, note="(global_end, local_end) after each call")
        for name, store in (("k", kv.k), ("v", kv.v)):
            stored = torch.stack([run[f"chunk{c}/kv_after_update/layer{layer}/{name}"][0]
                                  for layer in range(model.config.num_layers)])
            held = model.sequence.full_heads(store[:, 0], dim=2)  # (layers, kv_tokens, heads, head_dim)
            yield compare(f"dit/replay/chunk{c}/kv_after_update_{name}", held, stored, **CALL_TOL,
                          note="all layers")


def free_running_checks(model: CausalDiT, sampler: FlowMatchSampler, run: RolloutFile,
                        controls: list[torch.Tensor] | None = None, name: str = "x0_latents") -> Iterator[Check]:
    """Our sampler + DiT from the seed alone (camera condition per chunk: `controls` or the stored one)."""
    generator = torch.Generator().manual_seed(int(run["noise_seed"]))
    noise = torch.randn(run["noise_init"].shape, generator=generator)
    if controls is None:
        yield compare("dit/rollout/noise_init", noise, run["noise_init"], atol=0, rtol=0)
    cache = new_session(model, run)
    chunks = []
    for c, x in enumerate(noise.split(run.chunk_size, dim=1)):
        control = None if controls is None else controls[c]
        for s in range(run.num_steps):
            flow = call(model, cache, run, c, x, sampler.timestep(s, 1), control)
            x0 = sampler.to_x0(s, x, flow)
            if s < run.num_steps - 1:
                x = sampler.renoise_from(s + 1, x0, generator)
        chunks.append(x0)
        call(model, cache, run, c, x0, torch.zeros(1), control)
    source = "" if controls is None else f"{model.config.control_type} condition from the action string"
    yield compare(f"dit/rollout/{name}", torch.cat(chunks, dim=1), run["x0_latents"], **ROLLOUT_TOL, note=source)


def run(fixture: Fixture, *, ctx=None, options=None) -> Iterator[Check]:
    """All DiT checks of a fixture set (config and cache geometry read from the set itself).

    With a ParallelContext and ParallelOptions the DiT runs in that layout
    (Ulysses, FSDP2); every rank computes the same checks.
    """
    model = load_dit_checkpoint(fixture.path("transformer"), device="cpu", dtype=torch.float32)
    if ctx is not None:
        model = options.apply_dit(model, ctx)
    rollout = RolloutFile(fixture)
    steps = rollout["timesteps_index"].tolist()
    sampler = FlowMatchSampler(step_indices=steps)
    with torch.no_grad():
        yield from schedule_checks(sampler, rollout)
        yield from replay_checks(model, sampler, rollout)
        yield from free_running_checks(model, sampler, rollout)
        from_keys = torch.from_numpy(condition_from_keys(fixture)).split(rollout.chunk_size, dim=2)
        yield from free_running_checks(model, sampler, rollout, list(from_keys), "x0_latents_from_keys")

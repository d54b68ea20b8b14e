"""Which rank this process is, its device, and the process groups it talks over (torchrun environment)."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 30.0
# Timeout of the group long barriers run on: its point-to-point sends must outlast the longest barrier a rank
# waits at (loading a checkpoint, rank 0's first decode at a size); each barrier passes its own, shorter limit.
WAIT_GROUP_TIMEOUT_S = 7200.0


@dataclass(kw_only=True)
class ParallelContext:
    """The rank's place in the group; `single()` is the inert one-rank default used everywhere else."""

    rank: int = 0
    """Global rank (0 owns all I/O)."""
    world_size: int = 1
    """Ranks in the group."""
    local_rank: int = 0
    """Rank on this node (selects the GPU)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """cuda:local_rank with NCCL when CUDA is available, else cpu with gloo."""
    ulysses_size: int = 1
    """Ranks that split one chunk's tokens (Ulysses sequence parallelism); divides world_size."""
    ulysses_group: dist.ProcessGroup | None = None
    """The Ulysses group holding this rank (None on one rank)."""
    control_group: dist.ProcessGroup | None = None
    """A gloo group for host-side control messages (rank 0 -> all), whatever the compute backend."""
    wait_group: dist.ProcessGroup | None = None
    """A gloo group with a long timeout for barriers that may wait minutes (the control group's is short)."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Collective timeout: a dead or stuck rank surfaces after this many seconds, not the 10-minute default."""

    @classmethod
    def single(cls) -> "ParallelContext":
        return cls()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, *, ulysses_size: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 env: dict[str, str] | None = None) -> "ParallelContext":
        """Join the group torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK (one rank when they are absent).

        ulysses_size defaults to the whole world; it must divide world_size.
        """
        env = os.environ if env is None else env
        world_size = int(env.get("WORLD_SIZE", "1"))
        ulysses = world_size if ulysses_size is None else ulysses_size
        if ulysses < 1 or world_size % ulysses:
            raise ValueError(f"ulysses size {ulysses} must be >= 1 and divide the world size {world_size}")
        if world_size == 1:
            return cls.single()
        rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", "0"))
        timeout = timedelta(seconds=timeout_s)
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
        else:
            device = torch.device("cpu")
            dist.init_process_group("gloo", timeout=timeout)
        ulysses_group = None
        for first in range(0, world_size, ulysses):  # every rank must create every group, in the same order
            group = dist.new_group(list(range(first, first + ulysses)), timeout=timeout)
            if first <= rank < first + ulysses:
                ulysses_group = group
        control = dist.new_group(list(range(world_size)), backend="gloo", timeout=timeout)
        wait = dist.new_group(list(range(world_size)), backend="gloo", timeout=timedelta(seconds=WAIT_GROUP_TIMEOUT_S))
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, device=device, ulysses_size=ulysses,
                   ulysses_group=ulysses_group, control_group=control, wait_group=wait, timeout_s=timeout_s)

    def barrier(self, timeout_s: float | None = None) -> None:
        """Wait for every rank over the control group; raises after timeout_s (default: the collective timeout).

        A longer timeout_s suits uneven phases such as loading a checkpoint,
        so that the model's first collective starts with every rank present.
        It runs on the wait group: on the control group a rank that arrives
        early would see its send time out after the short collective timeout.
        """
        if not self.distributed:
            return
        if timeout_s is None:
            dist.barrier(group=self.control_group)
        else:
            dist.monitored_barrier(group=self.wait_group, timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)

    def broadcast_object(self, obj: object = None) -> object:
        """Rank 0's `obj` on every rank (others pass None): pickled bytes over the gloo control group."""
        if not self.distributed:
            return obj
        size = torch.zeros(1, dtype=torch.int64)
        if self.is_leader:
            payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
            size[0] = payload.numel()
        dist.broadcast(size, src=0, group=self.control_group)
        if not self.is_leader:
            payload = torch.empty(int(size[0]), dtype=torch.uint8)
        dist.broadcast(payload, src=0, group=self.control_group)
        return obj if self.is_leader else pickle.loads(payload.numpy().tobytes())

    def all_gather_object(self, obj: object) -> list[object]:
        """Every rank's `obj`, in rank order, on every rank (over the control group)."""
        if not self.distributed:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control_group)
        return out

    def shutdown(self) -> None:
        """Leave the group (safe to call twice or on one rank)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

"""The torchrun engine group: rank 0 broadcasts every admitted engine call, the other ranks replay it.

Rank 0 owns the front link and the step loop. Before it runs an engine call
it broadcasts a typed `EngineCall` over the gloo control group; every other
rank sits in `follow`, receives the same call and runs it, so the collectives
inside the model (Ulysses all-to-alls, FSDP2 all-gathers) line up. Only rank 0
encodes frames and replies. While idle, rank 0 broadcasts a `tick` about once
a second and gathers every rank's status: the ticks keep the followers'
collective timeout from firing and give the heartbeat per-rank health
(memory, attention backend). After the first chunk of a new signature and
after a test frame, every rank meets at a long barrier: rank 0's first VAE
decode at a size (cuDNN picking its kernels) may outlast the short collective
timeout the followers would otherwise be waiting in. A dead or stuck rank
makes a collective fail (or torchrun tear the group down), and the engine
group exits non-zero so the front restarts it.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass

import msgspec

from inference import protocol as P
from inference.distributed.context import ParallelContext
from inference.engine.base import EngineInfo, EngineUserError, WorldEngine
from inference.engine.link import FrontLink
from inference.engine.loop import EngineLoop

log = logging.getLogger("engine.group")

REPLAYED = frozenset({"open_session", "generate", "set_prompt", "reset", "close_session", "render_test_frame"})
TICK_S = 1.0


@dataclass(kw_only=True)
class EngineCall:
    """One step rank 0 admitted: an engine method (or 'tick' / 'shutdown') and its arguments."""

    method: str
    """A method of WorldEngine in REPLAYED, or 'tick' (status gather) or 'shutdown' (leave the loop)."""
    args: tuple = ()
    """Positional arguments, pickled (SessionSpec and ChunkWork carry numpy arrays)."""
    barrier_s: float | None = None
    """When set, every rank meets at a barrier with this timeout after the call (refused or not)."""


@dataclass(kw_only=True)
class RankStatus:
    """What each rank reports at a tick."""

    rank: int
    peak_rss_mb: float
    health: dict
    """The engine's RankHealth fields (memory used/planned/free, attention backend)."""


def rank_status(ctx: ParallelContext, engine: WorldEngine) -> RankStatus:
    return RankStatus(rank=ctx.rank, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      health=engine.health())


class LeaderEngine(WorldEngine):
    """Rank 0's engine: each call is broadcast to the group, then run here."""

    def __init__(self, engine: WorldEngine, ctx: ParallelContext, *, first_chunk_timeout_s: float = 600.0):
        self.engine = engine
        self.ctx = ctx
        self.first_chunk_timeout_s = first_chunk_timeout_s
        self.last_tick = time.monotonic()
        self.statuses: list[RankStatus] = []
        self.ranks: list[P.RankHealth] = []  # replaced whole, read by the I/O thread
        self.signatures: dict[str, str] = {}  # session id -> signature, to spot a signature's first chunk
        self.generated: set[str] = set()  # signatures that have run a chunk on every rank

    def _replay(self, method: str, *args, barrier_s: float | None = None):
        self.ctx.broadcast_object(EngineCall(method=method, args=args, barrier_s=barrier_s))
        try:
            return getattr(self.engine, method)(*args)
        finally:
            if barrier_s is not None:
                self.ctx.barrier(barrier_s)

    def info(self) -> EngineInfo:
        info = self.engine.info()
        info.world_size = self.ctx.world_size
        return info

    def warm_up(self) -> None:
        self.engine.warm_up()  # every rank warms up by itself, in step, before the loop starts

    def open_session(self, spec):
        sig = self._replay("open_session", spec)
        self.signatures[spec.session_id] = sig
        return sig

    def generate(self, works):
        sigs = {self.signatures.get(w.session_id) for w in works}
        first = not sigs <= self.generated  # a first chunk at this size: decode kernels are chosen now
        out = self._replay("generate", works, barrier_s=self.first_chunk_timeout_s if first else None)
        self.generated |= sigs
        return out

    def set_prompt(self, session_id, prompt):
        return self._replay("set_prompt", session_id, prompt)

    def reset(self, session_id):
        return self._replay("reset", session_id)

    def close_session(self, session_id):
        self.signatures.pop(session_id, None)
        return self._replay("close_session", session_id)

    def render_test_frame(self, prompt, seed, width, height):
        return self._replay("render_test_frame", prompt, seed, width, height, barrier_s=self.first_chunk_timeout_s)

    def health(self) -> dict:
        return self.engine.health()

    def tick(self) -> None:
        """Gather every rank's status (raises when a rank does not answer within the collective timeout)."""
        self.ctx.broadcast_object(EngineCall(method="tick"))
        self.statuses = self.ctx.all_gather_object(rank_status(self.ctx, self.engine))
        self.last_tick = time.monotonic()
        self.ranks = [P.RankHealth(rank=s.rank, alive=True, last_seen_s=0.0, **s.health) for s in self.statuses]

    def rank_health(self) -> list[P.RankHealth]:
        """Every rank with the seconds since it last answered a tick (memory as of that tick)."""
        age = time.monotonic() - self.last_tick
        return [msgspec.structs.replace(h, last_seen_s=age) for h in self.ranks]

    def close(self) -> None:
        self.ctx.broadcast_object(EngineCall(method="shutdown"))
        self.engine.close()


class GroupLoop(EngineLoop):
    """The step loop of rank 0 in a group: ticks the followers while it drains, reports their health."""

    def __init__(self, engine: LeaderEngine, link: FrontLink, **kwargs):
        super().__init__(engine, link, **kwargs)
        self.leader = engine

    def heartbeat_fields(self) -> dict:
        return {**super().heartbeat_fields(), "ranks": self.leader.rank_health()}

    def _drain(self, wait_s: float) -> None:
        super()._drain(wait_s)
        if not self.stopping and time.monotonic() - self.leader.last_tick >= TICK_S:
            self.leader.tick()


def follow(engine: WorldEngine, ctx: ParallelContext) -> None:
    """A non-zero rank: run each call rank 0 broadcasts, until 'shutdown' (collective errors propagate)."""
    while True:
        call: EngineCall = ctx.broadcast_object()
        if call.method == "shutdown":
            return
        if call.method == "tick":
            ctx.all_gather_object(rank_status(ctx, engine))
            continue
        if call.method not in REPLAYED:
            raise ValueError(f"rank {ctx.rank}: unknown engine call {call.method!r}; "
                             f"expected one of {sorted(REPLAYED)}")
        try:
            getattr(engine, call.method)(*call.args)
        except (EngineUserError, ValueError) as exc:  # rank 0 hits the same refusal and reports it
            log.debug("rank %d: %s refused: %s", ctx.rank, call.method, exc)
        if call.barrier_s is not None:
            ctx.barrier(call.barrier_s)

"""What one seed makes of a simulated run of users' classes: the group's size, each type's
shards, the number of clients and calls, and the protocol simulator's timings and links.

Kept apart from the run so the same seed gives the same group wherever it is asked (a run, a
replay line, a test), and so the choice is readable without the machinery that runs it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from derecho_actors.model.decorators import spec_of
from derecho_actors.sim.api import SimWorkload
from runtime.sim.runner import RunParams, choose_params

APP_FAULT_MODES = ("none", "crash", "partition", "join", "restart", "all")


@dataclass(frozen=True, slots=True)
class AppParams:
    seed: int
    members: tuple[int, ...]
    faults: str
    shards: dict[str, int]
    max_nodes: dict[str, int | None]  # a type's replicas per shard at most (None: every node is dealt one)
    clients: int
    calls: int
    base: RunParams  # the protocol simulator's parameters for the same seed (timings, links)

    def describe(self) -> str:
        c, m = self.base.config.multicast, self.base.config.membership
        return (
            f"seed={self.seed} members={len(self.members)} faults={self.faults} shards={self.shards} "
            + (f"max_nodes={capped} " if (capped := {t: k for t, k in self.max_nodes.items() if k}) else "")
            + f"clients={self.clients} calls={self.calls} window={c.window_size} batch={c.max_batch} "
            f"suspicion={m.suspicion_timeout * 1e3:.0f}ms link={self.base.link.base * 1e6:.0f}+"
            f"{self.base.link.jitter * 1e6:.0f}us"
            + (f" objects above {c.objects.threshold} bytes" if c.objects is not None else "")
        )


def choose_app_params(
    seed: int, workloads: list[SimWorkload], faults: str, members: int | None, calls: int | None
) -> AppParams:
    rng = random.Random(f"app-params-{seed}")
    n = members if members is not None else rng.randint(3, 5)
    base = choose_params(seed, members=n, messages=0, faults="none")
    objects = base.config.multicast.objects
    if objects is not None:
        # Users' calls are small: a low threshold sends many of their batches as objects, so the
        # block pipeline runs under the calls, replies, digests and histories checked here.
        threshold = random.Random(f"app-objects-{seed}").choice((24, 32, 48))
        multicast = replace(base.config.multicast, objects=replace(objects, threshold=threshold))
        base = replace(base, config=replace(base.config, multicast=multicast))
    shards = {spec_of(w.cls).name: (w.shards or rng.choice((1, 1, 2))) for w in workloads}  # type: ignore[union-attr]
    clients = rng.randint(2, 6)
    total = calls if calls is not None else rng.randint(80, 240)
    return AppParams(seed, base.members, faults, shards, _max_nodes(seed, workloads, shards, n), clients, total, base)


def _max_nodes(seed: int, workloads: list[SimWorkload], shards: dict[str, int], n: int) -> dict[str, int | None]:
    """Half the seeds cap a type's shards at 2 replicas (or its minimum) where the group has
    nodes to spare: spare nodes hold no replica of it, so clients' calls through them are
    relayed to a member, joiners stay spare and a crashed member's place is taken by a spare
    promoted into the shard, the view changes a contact relaying a session's calls must
    survive. Its own RNG, so that the other choices of a seed stay what they were."""
    rng = random.Random(f"app-layout-{seed}")
    caps: dict[str, int | None] = {}
    for w in workloads:
        name = spec_of(w.cls).name  # type: ignore[union-attr]
        cap = max(2, w.min_nodes)
        caps[name] = cap if rng.random() < 0.5 and n > shards[name] * cap else None
    return caps

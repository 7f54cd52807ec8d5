"""Large objects in the simulator: which seeds move them, and which payloads are large.

A seed draws, from a stream of its own (so every other draw of the seed stays what it was),
whether its cores carry large objects and with what policy: small thresholds and blocks, so an
object is a few to a few dozen blocks, each block one simulated network message subject to the
seed's delays, stalls, crashes and partitions. The workload then makes some of its payloads
large (padded past the threshold, the tag that makes each unique still in front), so the
invariants (one order, virtual synchrony, nothing delivered before every member held it, no
loss of what a live sender's send took) are checked with objects among the messages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from runtime.core.object_policy import ObjectPolicy
from runtime.core.rdmc_schedule import ScheduleKind

__all__ = ["ObjectLoad", "choose_objects"]


@dataclass(frozen=True, slots=True)
class ObjectLoad:
    """Every ``every``-th payload a node makes is padded to one of ``sizes`` bytes (in turn)."""

    every: int
    sizes: tuple[int, ...]

    def payload(self, tag: bytes, made: int) -> bytes:
        if made % self.every:
            return tag
        size = self.sizes[(made // self.every) % len(self.sizes)]
        return tag + b":" + b"o" * max(0, size - len(tag) - 1)

    def describe(self) -> str:
        return f"objects every {self.every} of {list(self.sizes)} bytes"


def choose_objects(seed: int) -> tuple[ObjectPolicy | None, ObjectLoad | None]:
    """The seed's large-object policy and load, or (None, None) for a run without them."""
    rng = random.Random(f"objects-{seed}")
    if rng.random() < 0.4:
        return None, None
    threshold = rng.choice((64, 200))
    # Objects are rare and a few blocks long: each costs rounds of credits over the seed's
    # (possibly slow) links, and a run must still finish its thousands of messages in time.
    policy = ObjectPolicy(
        threshold=threshold,
        block_size=rng.choice((64, 256)),
        kind=rng.choice(tuple(ScheduleKind)),
        max_object_size=1 << 16,
        max_objects=rng.choice((2, 4, 8)),
        max_bytes=1 << 20,
        window=rng.choice((2, 4)),
    )
    load = ObjectLoad(rng.choice((10, 30, 100)), tuple(rng.choice((threshold + 1, 500, 1500)) for _ in range(3)))
    return policy, load

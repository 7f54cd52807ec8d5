"""The simulator's checks of users' replicated classes that look at the application, not the
protocol: replicas' state digests at every point two of them share, their final states once
the group is quiet, the clients' histories against the workload's model, and the answer no
waiting call may get (``ReplyForgotten``: "applied already, reply no longer kept").

Each check only reads what the run gathered and returns what it found, so the run decides how
a finding becomes a violation (the first of each kind) and the checks can be read alone.
"""

from __future__ import annotations

from typing import Callable, Mapping

from derecho_actors.model.decorators import spec_of
from derecho_actors.sim.api import SimWorkload
from derecho_actors.sim.watch import WatchedRef
from derecho_actors.wire.digest import state_digest
from runtime.core.layout import ShardId
from runtime.errors import ReplyForgotten
from runtime.sim.history import HistoryRecorder, HistoryTooComplex, check_history


def is_forgotten(exc: BaseException) -> bool:
    """The call was answered "applied already, reply no longer kept". A simulated caller waits
    for at most a few calls at a time, far below the replicas' reply window and bytes, so its
    calls' replies are always kept while it waits: this answer means a later call of its
    session was ordered before this one and the replicas skipped it (the call is lost while
    its client is told it ran), the bug class of a contact relaying a session's calls two ways.
    Recognised by its type (``ReplyForgotten``, the replicas' refusal), not its wording."""
    return isinstance(exc, ReplyForgotten)


class DigestBook:
    """State digests by (shard, view, calls of the view so far): the first replica to reach a
    point sets its digest, and every other replica reaching it must match."""

    def __init__(self) -> None:
        self.digests: dict[tuple[ShardId, int, int], tuple[int, bytes]] = {}
        self.checked = 0

    def record(self, shard: ShardId, vid: int, count: int, node: int, digest: bytes, methods: list[str]) -> str | None:
        """Keep or compare ``node``'s digest; the divergence found, if any."""
        key = (shard, vid, count)
        seen = self.digests.get(key)
        self.checked += 1
        if seen is None:
            self.digests[key] = (node, digest)
            return None
        if seen[1] == digest:
            return None
        return (
            f"replicas of {shard} hold different states after call {count} of view {vid}: node {seen[0]} "
            f"{seen[1].hex()[:12]}, node {node} {digest.hex()[:12]} (the last batch ran {', '.join(methods)}); "
            "a method is not deterministic, or a P2P method changed state"
        )


def final_state_differences(
    replicas: Mapping[tuple[int, ShardId], WatchedRef], hosting: Callable[[int], bool]
) -> list[str]:
    """Once the group is quiet every replica of a shard on a live node (``hosting``) that is not
    awaiting its state holds the same state; one finding per shard that does not."""
    by_shard: dict[ShardId, list[tuple[int, bytes]]] = {}
    for (node, shard), ref in sorted(replicas.items(), key=lambda kv: (str(kv[0][1]), kv[0][0])):
        if hosting(node) and not ref.replica.awaiting:
            by_shard.setdefault(shard, []).append((node, state_digest(ref.replica, ref.replica.spec)))
    found = []
    for shard, digests in by_shard.items():
        if len({d for _, d in digests}) > 1:
            shown = ", ".join(f"node {n} {d.hex()[:12]}" for n, d in digests)
            found.append(f"replicas of {shard} end with different states: {shown}")
    return found


def history_problems(workloads: list[SimWorkload], histories: Mapping[str, HistoryRecorder]) -> list[tuple[str, str]]:
    """(kind, detail) for each type with a model whose clients' history is not linearizable,
    or too complex to check."""
    found = []
    for w in workloads:
        spec = spec_of(w.cls)
        assert spec is not None
        history = histories.get(spec.name)
        if history is None or w.model is None:
            continue
        try:
            verdict = check_history(history.ops(), w.model)
        except HistoryTooComplex as exc:
            found.append(("history-too-complex", f"{spec.name}: {exc}; make fewer concurrent calls per key"))
            continue
        if not verdict.ok:
            found.append(("not-linearizable", f"{spec.name} ({w.model}): {verdict.problem}"))
    return found

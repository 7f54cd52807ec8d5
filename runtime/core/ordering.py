"""Round-robin total order and the stability frontier, as pure arithmetic.

Derecho orders a shard's messages round-robin across its senders: the k-th message of the
sender at position s (of n senders) has global index ``k * n + s``. A message may be delivered
once it is stable (every member received it) and everything before it in the global order has
been delivered. Both rules collapse into one number, the *delivery frontier*: the first global
index that cannot be delivered yet. Computing it from per-sender stable counts costs O(senders),
however many messages it releases, which is what lets one stability step deliver a batch.
"""

from __future__ import annotations

from typing import Sequence


def global_index(k: int, sender_pos: int, n_senders: int) -> int:
    """Global index of the k-th message (0-based) of the sender at ``sender_pos``."""
    return k * n_senders + sender_pos


def position(g: int, n_senders: int) -> tuple[int, int]:
    """Inverse of :func:`global_index`: ``(k, sender_pos)``."""
    return divmod(g, n_senders)


def delivery_frontier(stable_counts: Sequence[int]) -> int:
    """First global index not deliverable, given how many messages of each sender are stable.

    Message ``k*n + s`` is deliverable iff every message before it is stable; the first one
    that is not is the smallest ``stable_counts[s] * n + s`` over senders s.
    """
    n = len(stable_counts)
    return min(c * n + s for s, c in enumerate(stable_counts))


def count_before(frontier: int, sender_pos: int, n_senders: int) -> int:
    """How many messages of ``sender_pos`` have global index below ``frontier``."""
    if frontier <= sender_pos:
        return 0
    return (frontier - sender_pos + n_senders - 1) // n_senders


def catch_up_count(sender_pos: int, sent: int, received: Sequence[int], n_senders: int) -> int:
    """Null messages the sender at ``sender_pos`` owes so no received message waits on it.

    ``received[s]`` is how many messages of sender s this member holds. The highest global
    index held from another sender is ``(received[s] - 1) * n + s``; the sender must send
    until its own next index passes it.
    """
    highest = -1
    for s, c in enumerate(received):
        if s != sender_pos and c:
            g = (c - 1) * n_senders + s
            if g > highest:
                highest = g
    return nulls_to_pass(sender_pos, sent, highest, n_senders)


def nulls_to_pass(sender_pos: int, sent: int, g: int, n_senders: int) -> int:
    """Null messages the sender at ``sender_pos``, having sent ``sent``, owes so that its own
    next global index passes ``g`` (none if it already does, or ``g`` comes before its first)."""
    if g < sender_pos:
        return 0
    needed = (g - sender_pos) // n_senders + 1
    return needed - sent if needed > sent else 0

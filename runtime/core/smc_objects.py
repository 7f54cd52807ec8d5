"""One shard's large objects in one view: which slots are descriptors, and which are held here.

Derecho gates SMC delivery on RDMC completion; so does this: a member's ``received_num`` for a
sender does not pass a descriptor's slot until the object is whole (and checked) here. Stability
is the minimum of ``received_num`` over the shard, so a descriptor becomes stable, and is
delivered in its place in the total order, only once every member holds the object; a view
change trims at the same counts, so an object is delivered at every survivor or at none.

This module keeps the per-sender state that takes: the slots of descriptors not complete here
(``pending``), the bytes of objects held here until they are delivered (``held``: the sender's
own data (with its digest) from the start, a receiver's buffer from completion), and the objects
to admit to the node's transfer engine (this member's own to start, others' descriptors to
announce). :class:`runtime.core.smc.ShardMulticast` owns one and asks it; the node core moves
what is due to the engine. In a shard admitted in its total order (``ordered``, see
:mod:`runtime.core.object_transfers`), an object is due only once this member holds every
message before its slot, and objects are due in slot order.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence

from runtime.core.messages import Payload
from runtime.core.object_policy import ObjectPolicy
from runtime.core.rdmc_descriptor import Digested, ObjectDescriptor, ObjectId, describe
from runtime.core.rdmc_events import StartSending

__all__ = ["ShardObjects"]


class ShardObjects:
    """Large-object state of one member for one shard in one view.

    ``members`` are the shard's node ids in rank order, ``sender_nodes`` the node of each
    sender position; ``stream`` names the shard among the view's shards (the transfer engine
    orders a sender's objects per stream)."""

    def __init__(
        self, policy: ObjectPolicy, members: Sequence[int], sender_nodes: Sequence[int], vid: int, stream: int
    ) -> None:
        self.policy = policy
        self.vid = vid
        self.stream = stream
        self._members = tuple(members)
        self._sender_nodes = tuple(sender_nodes)
        self.quota = policy.quota(len(sender_nodes))
        n = len(sender_nodes)
        self.pending: list[deque[int]] = [deque() for _ in range(n)]  # sender indices, ascending
        # This member's own objects (Digested: a resend in the next view needs no new pass) and
        # the receive buffers of others' objects that are whole here.
        self.held: list[dict[int, Digested | memoryview]] = [{} for _ in range(n)]
        self.n_senders = n
        # Objects to admit, in the order they are due: as they arise, or (``ordered``) in slot
        # order once every message before the slot is held here, via the heap of those not due
        # yet (global slot index first: unique, so the items are never compared).
        self.ordered = False
        self.due: list[StartSending | ObjectDescriptor] = []
        self._later: list[tuple[int, StartSending | ObjectDescriptor]] = []

    def transfer_members(self, pos: int) -> tuple[int, ...]:
        """The transfer's member list for objects of sender ``pos``: the sender first, then the
        other shard members in rank order (every member derives the same list)."""
        sender = self._sender_nodes[pos]
        return (sender, *(m for m in self._members if m != sender))

    # ------------------------------------------------------------------ sender
    def own_undelivered(self, pos: int) -> int:
        return len(self.held[pos])

    def start(self, pos: int, k: int, payload: bytes | Digested) -> ObjectDescriptor:
        """This member's message ``k`` is the object ``payload``: its descriptor, to go in the
        slot (the data is kept for delivery here and for a resend if the view ends first). A
        :class:`Digested` payload brings its digest (computed off the loop by the driver); plain
        bytes are digested here, in one pass."""
        oid = ObjectId(self._sender_nodes[pos], k, self.vid, self.stream)
        data, digest = (payload.data, payload.digest) if isinstance(payload, Digested) else (payload, None)
        d = describe(oid, self.transfer_members(pos), data, self.policy.block_size, self.policy.kind, digest)
        self.held[pos][k] = payload if isinstance(payload, Digested) else Digested(data, d.digest)
        self._arose(pos, k, StartSending(d, data))
        return d

    # ---------------------------------------------------------------- receiver
    def check(self, pos: int, k: int, d: ObjectDescriptor) -> str | None:
        """Why sender ``pos``'s message ``k`` cannot be the object ``d``, or None."""
        want = ObjectId(self._sender_nodes[pos], k, self.vid, self.stream)
        if d.oid != want:
            return f"object descriptor names {d.oid}, its slot is {want}"
        if d.members != self.transfer_members(pos):
            return f"object {d.oid} lists members {d.members}, the shard's are {self.transfer_members(pos)}"
        if d.size > self.policy.max_object_size or d.blocks > self.policy.max_blocks:
            return (
                f"object {d.oid} of {d.size} bytes in {d.blocks} blocks exceeds this node's "
                f"max_object_size {self.policy.max_object_size} or {self.policy.max_blocks} blocks"
            )
        return None

    def take(self, pos: int, k: int, d: ObjectDescriptor) -> None:
        """A checked descriptor arrived in sender ``pos``'s slot ``k``."""
        self.pending[pos].append(k)
        self._arose(pos, k, d)

    def _arose(self, pos: int, k: int, item: StartSending | ObjectDescriptor) -> None:
        if self.ordered:
            heapq.heappush(self._later, (k * self.n_senders + pos, item))
        else:
            self.due.append(item)

    @property
    def not_due(self) -> int:
        """Objects waiting for the messages before their slots (``ordered`` only)."""
        return len(self._later)

    def release(self, frontier: int) -> None:
        """This member holds every message before global index ``frontier``: the objects in
        slots below it are due, in slot order."""
        later = self._later
        while later and later[0][0] < frontier:
            self.due.append(heapq.heappop(later)[1])

    def received_bound(self, pos: int, held: int) -> int:
        """What ``received_num`` of sender ``pos`` may say when ``held`` of its messages are
        here: not past its first object that is not whole here."""
        pending = self.pending[pos]
        return pending[0] if pending and pending[0] < held else held

    def complete(self, pos: int, k: int, data: memoryview) -> bool:
        """The object in sender ``pos``'s slot ``k`` is whole here; False if it is not pending
        (a completion of another view, or twice: nothing changes)."""
        pending = self.pending[pos]
        if k not in pending:
            return False
        pending.remove(k)
        self.held[pos][k] = data
        return True

    # ---------------------------------------------------------------- delivery
    def fill(self, pos: int, k0: int, seg: list[Payload]) -> None:
        """Put the objects' bytes in place of their descriptors in sender ``pos``'s run
        ``seg`` of messages ``k0 ..``, as it is delivered (they are no longer held here)."""
        held = self.held[pos]
        if not held:
            return
        k1 = k0 + len(seg)
        for k in [k for k in held if k0 <= k < k1]:
            seg[k - k0] = _payload(held.pop(k))

    def data_of(self, pos: int, k: int) -> bytes | memoryview:
        """The bytes of the object in a slot within the trim (whole here, since the trim never
        passes this member's ``received_num``)."""
        return _payload(self.held[pos].pop(k))

    def resend_of(self, pos: int, k: int) -> Digested:
        """This member's own object in slot ``k``, trimmed by a view change: to send again in
        the next view as a new object (with the digest it had, so no new pass over it)."""
        held = self.held[pos].pop(k)
        assert isinstance(held, Digested), "only a member's own objects are resent"
        return held


def _payload(held: Digested | memoryview) -> bytes | memoryview:
    """What the application gets for a delivered object, without a copy: the sender's own
    bytes, or a read-only ``memoryview`` of a receiver's buffer (copying a GiB to ``bytes`` on
    the node's loop would stall it for about a second). Read-only: a relay of it may still sit
    in a transport's queue (no member needs it any more, but its bytes must stay the object's).
    A read-only view is hashable and compares by content, as ``bytes`` do."""
    if isinstance(held, Digested):
        data = held.data
        return data if type(data) is bytes else memoryview(data).toreadonly()
    return held.toreadonly()

"""Small-message multicast (SMC) with round-robin total order for one shard in one view.

Each member of the shard owns a row of the shard's SST with ``received_num[s]`` (how many
messages of sender s it holds) and ``delivered_num`` (how many global indices it has
delivered). A sender appends messages to its window and pushes them with its row; receivers
take them in sender order, raise ``received_num`` and push back. The stability predicate
(minimum of ``received_num`` over all rows) releases whole batches for delivery.

Flow control follows the brief's measured design note: a sender may run ahead of the slowest
receiver by at most ``window_size`` messages, *and* may have at most ``window_size`` of its own
messages undelivered locally. The second bound stops a fast sender from piling up messages
that all wait on a slow sender's next slot. The same stretch of messages is also bounded in
bytes (``window_bytes``), so the message window can be large for small messages (a single
sender is bound by its window: it needs a round trip per window) while what a receiver
buffers for a sender stays a few MB whatever the message size.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from functools import partial
from itertools import accumulate, compress, islice, repeat, takewhile
from operator import attrgetter, is_, is_not
from typing import Any, Callable, Iterator, Sequence, cast, overload

from runtime.core import ordering
from runtime.core.effects import DeliveredMessage, Delivery, Rejected
from runtime.core.messages import Payload, ShardKey, ShardPush
from runtime.core.multicast_config import MulticastConfig
from runtime.core.rdmc_descriptor import ObjectDescriptor, ObjectTooLarge, OwnPayload
from runtime.core.rdmc_events import StartSending
from runtime.core.smc_objects import ShardObjects
from runtime.core.sst import SST, Column, Schema, SSTError

__all__ = ["DeliveredBatch", "LAZY_PUSH_DELAY", "MulticastConfig", "ShardMulticast", "shard_schema"]

_NULL_TYPE = type(None)
_PAYLOAD_TYPES = frozenset({bytes, _NULL_TYPE})
_OBJECT_PAYLOAD_TYPES = frozenset({bytes, _NULL_TYPE, ObjectDescriptor})
_IS_NULL = partial(is_, None)


class DeliveredBatch(Sequence[DeliveredMessage]):
    """The messages of one :class:`Delivery`: global indices ``start .. stop - 1`` of a shard
    with ``n`` senders, less the null messages.

    To its users it is a read-only list of ``(global_index, sender_node, sender_index,
    payload)`` tuples (``len``, iteration, indexing, ``==`` with a list, ``+``). The stability
    step only hands over each sender's run of payloads (``parts``: ``(sender_pos, node, k0,
    payloads)``, the run's first sender index ``k0``); the columns are laid out with a few
    slice operations when first read, and iteration zips them, so a consumer that unpacks
    the tuples in a loop allocates none. Delivering costs no Python work per message, nor
    a garbage-collector pass over a fresh tuple per message, nor a touch of each payload
    before the application reads it.
    """

    __slots__ = ("_start", "_stop", "_n", "_parts", "_len", "_cols")

    def __init__(
        self, start: int, stop: int, n: int, parts: list[tuple[int, int, int, list[Payload]]], nulls: int = 0
    ) -> None:
        self._start, self._stop, self._n, self._parts = start, stop, n, parts
        self._len = stop - start - nulls
        self._cols: tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[bytes]] | None = None

    def _columns(self) -> tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[bytes]]:
        cols = self._cols
        if cols is None and self._len == 1:
            cols = self._cols = self._single()
            self._parts = []
        if cols is None:
            start, stop, n = self._start, self._stop, self._n
            total = stop - start
            payloads: list[Payload] = [None] * total
            senders: list[int] = [0] * total
            ks: list[int] = [0] * total
            for pos, node, k0, seg in self._parts:
                slots = slice(k0 * n + pos - start, None, n)  # every n-th slot is this sender's
                payloads[slots] = seg
                ks[slots] = range(k0, k0 + len(seg))
                senders[slots] = repeat(node, len(seg))
            indices: Sequence[int] = range(start, stop)
            if self._len < total:  # keep the real messages, not the nulls
                keep = list(map(is_not, payloads, repeat(None)))
                indices = list(compress(indices, keep))
                senders = list(compress(senders, keep))
                ks = list(compress(ks, keep))
                payloads = list(compress(payloads, keep))
            cols = self._cols = (indices, senders, ks, payloads)  # type: ignore[assignment]
            self._parts = []
        return cols  # type: ignore[return-value]

    def _single(self) -> tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[bytes]]:
        """The columns of a batch of one real message (a serial call's: its message and the
        idle members' nulls), found without laying out the whole stretch."""
        n = self._n
        for pos, node, k0, seg in self._parts:
            for j, p in enumerate(seg):
                if p is not None:
                    return [(k0 + j) * n + pos], [node], [k0 + j], [p]  # type: ignore[list-item]
        raise AssertionError("a batch of one message holds none")  # pragma: no cover

    def followed_by(self, stop: int, parts: list[tuple[int, int, int, list[Payload]]], nulls: int) -> DeliveredBatch:
        """This batch and the stretch after it (up to ``stop``, laid out as ``parts`` with
        ``nulls`` nulls) as one batch, before anyone read it: each sender's run of the
        stretch starts where its run here ends, so the two become one list."""
        assert self._cols is None, "a batch is extended only before it is read"
        runs = {part[0]: part[3] for part in self._parts}
        joined = list(self._parts)
        for part in parts:
            run = runs.get(part[0])
            if run is None:
                joined.append(part)
            else:
                run.extend(part[3])
        before = self._stop - self._start - self._len
        return DeliveredBatch(self._start, stop, self._n, joined, before + nulls)

    def payloads(self) -> Sequence[bytes]:
        """The payloads alone, in delivery order. A consumer that needs nothing else (a
        counter, a measurement) gets them with a slice assignment per sender run instead of
        the four columns iteration lays out."""
        if self._cols is not None:
            return self._cols[3]
        if self._len == 1:
            return self._columns()[3]
        start, stop, n = self._start, self._stop, self._n
        payloads: list[Payload] = [None] * (stop - start)
        for pos, _node, k0, seg in self._parts:
            payloads[k0 * n + pos - start :: n] = seg
        if self._len < stop - start:
            return list(compress(payloads, map(is_not, payloads, repeat(None))))  # type: ignore[arg-type]
        return payloads  # type: ignore[return-value]

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[DeliveredMessage]:
        return zip(*self._columns())

    @overload
    def __getitem__(self, i: int) -> DeliveredMessage: ...
    @overload
    def __getitem__(self, i: slice) -> list[DeliveredMessage]: ...
    def __getitem__(self, i: int | slice) -> DeliveredMessage | list[DeliveredMessage]:
        if isinstance(i, slice):
            return list(self)[i]
        g, s, k, p = self._columns()
        return (g[i], s[i], k[i], p[i])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (DeliveredBatch, list)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like a list

    def __add__(self, other: Any) -> list[DeliveredMessage]:
        return list(self) + list(other)

    def __radd__(self, other: Any) -> list[DeliveredMessage]:
        return list(other) + list(self)

    def __repr__(self) -> str:
        return repr(list(self))


# A push's header fields read untyped (what a peer sent, checked by on_push: a compiled build
# would otherwise check them against the annotations first, raising TypeError).
_PUSH_FIELDS = attrgetter("rank", "first")

# How long a change of a lazy column (``delivered_num``) may wait for a push to ride on
# before the member pushes it on its own. Under load every push carries it; idle, peers'
# status views lag by at most this much.
LAZY_PUSH_DELAY = 0.02


def shard_schema(n_senders: int) -> Schema:
    return Schema(
        (
            Column("received_num", width=n_senders),
            # Only read by status views: no frame of its own per delivery (see LAZY_PUSH_DELAY).
            Column("delivered_num", lazy=True),
            # Every version below this is on this member's disk (persistent delivery mode).
            Column("persisted"),
        )
    )


class ShardMulticast:
    """The SMC state of this member for one shard.

    ``members`` are node ids in rank order; ``senders`` the ranks that may send (all by
    default). Only :meth:`send`, :meth:`on_push`, :meth:`on_tick` and :meth:`drain` change
    state; the owner calls :meth:`drain` to collect pushes and deliveries.
    """

    def __init__(
        self,
        shard: ShardKey,
        members: Sequence[int],
        my_node: int,
        config: MulticastConfig = MulticastConfig(),
        senders: Sequence[int] | None = None,
        now: float = 0.0,
        vid: int = 0,
        persisted: int = 0,
        stream: int = 0,
        object_room: Callable[[int], bool] | None = None,
        object_order: bool = False,
    ) -> None:
        """``stream``: this shard's index among the view's shards (names its objects);
        ``object_room(size)``: whether this node can start an object of that size now (its
        transfer engine's limits); ``object_order``: the node admits this shard's objects in
        its total order (see :mod:`runtime.core.object_transfers`): each is handed over once
        every message before its slot is held here, and a sender's own waits there for room
        after its slot is taken. All three matter only with ``config.objects``."""
        if my_node not in members:
            raise ValueError(f"node {my_node} is not a member of shard {shard!r}")
        if len(set(members)) != len(members):
            raise ValueError(f"shard {shard!r} lists a member twice: {list(members)}")
        self.shard = shard
        self.vid = vid
        self.members: tuple[int, ...] = tuple(members)
        self.my_rank = self.members.index(my_node)
        self.config = config
        sender_ranks = tuple(range(len(members))) if senders is None else tuple(senders)
        if not sender_ranks or any(not 0 <= r < len(members) for r in sender_ranks):
            raise ValueError(f"bad sender ranks {sender_ranks} for {len(members)} members")
        self.sender_ranks = sender_ranks
        self.n_senders = len(sender_ranks)
        self._pos_of_rank = {r: i for i, r in enumerate(sender_ranks)}
        self.my_pos: int | None = self._pos_of_rank.get(self.my_rank)
        self.sst = SST(shard_schema(self.n_senders), len(members), self.my_rank)
        self.objects: ShardObjects | None = None
        if config.objects is not None:
            self.objects = ShardObjects(
                config.objects, self.members, [self.members[r] for r in sender_ranks], vid, stream
            )
            self.objects.ordered = object_order
        self._object_room = object_room
        # Undelivered messages per sender position, the sender index of each list's head, and
        # how many of each list are nulls (so a batch without nulls is delivered without a
        # look at each message).
        self._buf: list[list[Payload]] = [[] for _ in range(self.n_senders)]
        self._buf_base: list[int] = [0] * self.n_senders
        self._buf_nulls: list[int] = [0] * self.n_senders
        # Per sender position: a run of null slots held here (first, end) and whether a real
        # message ends it (see _past_nulls).
        self._null_scan: list[tuple[int, int, bool]] = [(0, 0, False)] * self.n_senders
        self._delivered = 0  # delivery frontier (global index of the next delivery)
        self._target = 0  # frontier computed by the stability predicate for its trigger
        self._unpushed_from = 0  # my sender index of the first message not yet pushed
        self._last_send_at = now
        # The byte window: payload bytes this member sent (nulls weigh nothing), and per send
        # ``(sender index after it, bytes sent after it)``; a send's bytes are released once
        # all of it is below the window's base (conservative: never more than the truth).
        self._own_bytes = 0
        self._released_bytes = 0
        self._own_marks: deque[tuple[int, int]] = deque()
        self._blocked = False
        self._slowest_receipt = 0  # of this member's messages, as _receipts_moved last saw it
        # The last send left some of what it was offered with the caller (its queue is not
        # empty): owed nulls then wait null_interval (see _null_due_at).
        self._app_waiting = False
        self._last_null_at = -math.inf  # when this member last sent null messages
        self._deliveries: list[Delivery] = []
        self._window_opened = False
        self.nulls_sent = 0
        # The global index the next message of the latest real (not null) message's sender
        # will have: an idle member fills its own slots up to it, one message ahead of what
        # catching up needs, so that sender's next message does not wait a round trip for
        # this member's null (3 hops to delivery instead of 2). Nulls never move it: no
        # null ping-pong, and an idle group falls silent.
        self._next_real = -1
        # How many null messages received since the last push of this member's row were not
        # acknowledged at once. A receipt of nulls alone makes no push due (see _nulls_wait):
        # the acknowledgement rides with the next push, and each null push of an idle member
        # does not draw an acknowledgement push from every other member (issue 21).
        self._deferred_nulls = 0
        # nulls_owed() and send_capacity() as last computed, and the inputs they were computed
        # from (the table's version, _next_real, the delivery frontier): -1 is no version.
        self._owed = 0
        self._owed_version = -1
        self._owed_next_real = -1
        self._capacity = 0
        self._capacity_version = -1
        self._capacity_delivered = -1
        self.wedged = False
        self._lazy_at: float | None = None  # when lazy row changes get a push of their own
        self._lazy_due = False
        # Messages trimmed from the previous view, sent again here before any new payload.
        self.resend: list[OwnPayload] = []
        self.sst.register("stability", self._stable_beyond_delivered, self._deliver_stable)
        # Persistence frontier: every member's disk holds all versions up to it. Rows start at
        # 0 until a member pushes, so the frontier only moves once everyone has reported.
        self._persisted_reported = 0
        self._persisted_frontiers: list[int] = []
        if persisted > 0:
            self.sst.set("persisted", persisted)
        self.sst.register("persistence", self._persisted_beyond_reported, self._report_persisted)
        # Delivered everywhere: every member has delivered every global index below it (for
        # reads that must not show what some replica has not applied yet). ``delivered_num``
        # is lazy, so this trails the deliveries by at most a lazy push (LAZY_PUSH_DELAY).
        self._stable_reported = 0
        self._stable_moved = False
        self.sst.register("delivered everywhere", self._stable_beyond_reported, self._report_stable)

    # ------------------------------------------------------------------ sending
    @property
    def sent(self) -> int:
        """Messages (nulls included) this member has sent in this shard."""
        if self.my_pos is None:
            return 0
        return self.sst.mine["received_num"][self.my_pos]  # type: ignore[index]

    def _window_base(self, pos: int) -> int:
        """The first of this member's messages still in its window: not yet held by every
        member, or not yet delivered here."""
        slowest = min(row["received_num"][pos] for row in self.sst.rows)  # type: ignore[index]
        return min(slowest, ordering.count_before(self._delivered, pos, self.n_senders))

    def send_capacity(self) -> int:
        """How many more messages the window admits right now, by count: null messages
        weigh nothing, so only payloads (``send``) also keep to ``window_bytes``.

        Read several times per flush (``on_tick`` in every ``evaluate``, ``wakeup_at`` in
        every ``ready``) while the table seldom moved in between: the figure is kept against
        what it is a function of, the table's version and the delivery frontier."""
        if self.my_pos is None or self.wedged:
            return 0
        version = self.sst.version
        if version == self._capacity_version and self._delivered == self._capacity_delivered:
            return self._capacity
        capacity = max(0, self._window_base(self.my_pos) + self.config.window_size - self.sent)
        self._capacity, self._capacity_version, self._capacity_delivered = capacity, version, self._delivered
        return capacity

    def window_bytes_free(self, base: int | None = None) -> int:
        """Payload bytes the window admits right now."""
        if self.my_pos is None:
            return 0
        if base is None:
            base = self._window_base(self.my_pos)
        marks = self._own_marks
        while marks and marks[0][0] <= base:
            self._released_bytes = marks.popleft()[1]
        return self.config.window_bytes - (self._own_bytes - self._released_bytes)

    def _fit_bytes(self, payloads: Sequence[OwnPayload], take: int, size: int, base: int) -> int:
        """How many of the first ``take`` payloads (``size`` bytes in all) fit the byte window
        (at least one when nothing is outstanding, so a message above ``window_bytes`` still
        goes alone); ``base``: the window's base now (``_window_base``)."""
        free = self.window_bytes_free(base)
        if take == 0 or size <= free:
            return take
        fit = bisect_right(list(accumulate(map(len, payloads[:take]))), free)
        if fit == 0 and self._own_bytes == self._released_bytes:
            return 1
        return fit

    def send(self, payloads: Sequence[OwnPayload], now: float) -> int:
        """Append as many payloads as the window admits; returns how many were taken.

        The rest stay the caller's: it retries after a ``window_open`` notice. Nothing is
        dropped. Raises ValueError if this member is not a sender or a payload the window
        would take now is too large (nothing is taken then).
        """
        if self.my_pos is None:
            raise ValueError(f"node at rank {self.my_rank} is not a sender in shard {self.shard!r}")
        self._drain_resend(now)
        if self.resend:  # trimmed messages of the last view go first, in their order
            self._blocked = True
            self._app_waiting = bool(payloads)
            return 0
        take = self._take_own(payloads, now)
        if take < len(payloads):
            self._blocked = True
        self._app_waiting = take < len(payloads)
        return take

    def _take_own(self, payloads: Sequence[OwnPayload], now: float) -> int:
        """Append as many of ``payloads`` as the windows (and, for large objects, the object
        limits) admit now; how many. Raises ValueError (nothing of the offending payload is
        taken) for a payload too large for any path."""
        take = self._take_some(payloads, now)
        if take == 0 or take == len(payloads):
            return take
        total = take  # a large object split the run: go on past it (rare, so slices are fine)
        while total < len(payloads):
            more = self._take_some(payloads[total:], now)
            if more == 0:
                break
            total += more
        return total

    def _take_some(self, payloads: Sequence[OwnPayload], now: float) -> int:
        pos = self.my_pos
        if pos is None or self.wedged:
            return 0
        base = self._window_base(pos)  # once for both windows (send_capacity's and the bytes')
        take = min(base + self.config.window_size - self.sent, len(payloads))
        if take <= 0:
            return 0
        # Only what the window admits now is measured: the caller offers its whole queue
        # each time the window opens, and a pass over a long backlog per offer would make
        # a node that falls behind fall further behind (the rest is checked when it goes).
        head = payloads[:take] if take < len(payloads) else payloads
        limit = self.config.max_message_size
        objects = self.objects
        small = limit if objects is None else objects.policy.threshold
        size = sum(map(len, head))  # measured once: the byte window and its marks reuse it
        if size > small:  # only then measure each one
            big = next((i for i, p in enumerate(head) if len(p) > small), None)
            if big == 0:
                return self._take_object(head[0], now)
            if big is not None:
                head, take = head[:big], big
                size = sum(map(len, head))
        take = self._fit_bytes(head, take, size, base)
        if take:
            # Only payloads above the threshold come Digested (the driver wraps no others): the
            # run taken here is of bytes.
            whole = take == len(head)
            self._append_own(cast(Sequence[bytes], head if whole else head[:take]), size=size if whole else None)
            self._last_send_at = now
        return take

    def _take_object(self, data: OwnPayload, now: float) -> int:
        """Send ``data`` as a large object if the limits admit it now (1), else 0."""
        objects, pos = self.objects, self.my_pos
        if objects is None:
            raise ValueError(f"payload of {len(data)} bytes exceeds max_message_size {self.config.max_message_size}")
        assert pos is not None
        policy = objects.policy
        if len(data) > policy.max_object_size:
            raise ObjectTooLarge(
                f"payload of {len(data)} bytes exceeds the largest object this group moves "
                f"(objects.max_object_size {policy.max_object_size}): send it in parts, or raise the limit"
            )
        if objects.own_undelivered(pos) >= objects.quota:
            return 0
        if self._object_room is not None and not self._object_room(len(data)):
            return 0
        d = objects.start(pos, self.sent, data)
        self._buf[pos].append(d)
        self.sst.set_item("received_num", pos, self.sent + 1)
        self._last_send_at = now
        return 1

    def sender_pos_of(self, node: int) -> int | None:
        """The sender position of ``node`` in this shard, None if it is not a sender here."""
        try:
            return self._pos_of_rank.get(self.members.index(node))
        except ValueError:
            return None

    def reopen(self) -> None:
        """The node's object limits have room again: a sender held back by them may retry."""
        if self._blocked and self.send_capacity() > 0:
            self._blocked = False
            self._window_opened = True

    def _drain_resend(self, now: float) -> None:
        if not self.resend:
            return
        taken = self._take_own(self.resend, now)
        if taken <= 0:
            return
        del self.resend[:taken]
        if not self.resend and self._blocked:
            self._window_opened = True

    def _append_own(self, msgs: Sequence[Payload], nulls: int = 0, size: int | None = None) -> None:
        """Append own messages (``nulls`` of them are null messages; ``size``: their bytes,
        if the caller measured them)."""
        pos = self.my_pos
        assert pos is not None
        self._buf[pos].extend(msgs)
        self._buf_nulls[pos] += nulls
        end = self.sent + len(msgs)
        if nulls < len(msgs):
            if size is None:
                size = sum(map(len, filter(None, msgs) if nulls else msgs))  # type: ignore[arg-type]
            self._own_bytes += size
            self._own_marks.append((end, self._own_bytes))
        self.sst.set_item("received_num", pos, end)

    # ---------------------------------------------------------------- receiving
    def on_push(self, push: ShardPush) -> Rejected | None:
        """Take a peer's push: its new messages first, then its row."""
        rank, first = _PUSH_FIELDS(push)  # as the peer sent them, untyped: checked here
        if type(rank) is not int or not 0 <= rank < len(self.members) or rank == self.my_rank:
            return Rejected(-1, f"push for shard {self.shard!r} names bad rank {rank!r}")
        if self.wedged:
            return None  # counts are frozen: what arrives now is beyond the trim or resent
        sender = self.members[rank]
        if push.messages:
            pos = self._pos_of_rank.get(rank)
            if pos is None:
                return Rejected(sender, f"rank {rank} is not a sender in shard {self.shard!r}")
            problem = self._take_messages(pos, first, push.messages)
            if problem:
                return Rejected(sender, problem)
        if push.row is not None:
            if push.row.rank != rank:
                return Rejected(sender, f"push from rank {rank} carries row {push.row.rank}", forged=True)
            try:
                self.sst.apply_remote_row(push.row)
            except SSTError as exc:
                return Rejected(sender, f"bad row in shard {self.shard!r}: {exc}")
        return None

    def _take_messages(self, pos: int, first: object, msgs: Sequence[Payload]) -> str | None:
        # Held here: may run ahead of received_num, which stops at an object not whole here.
        have = self._buf_base[pos] + len(self._buf[pos])
        if type(first) is not int or first < 0:
            return f"bad first index {first!r}"
        if first > have:
            return f"gap from sender {pos}: holds {have}, push starts at {first}"
        skip = have - first
        if skip >= len(msgs):
            return None  # all repeats (a resend after reconnect)
        fresh = msgs[skip:] if skip else msgs
        # A sender stays within window_size of the slowest receiver, and we are a receiver.
        if len(fresh) > self.config.window_size:
            return f"sender {pos} overran its window ({len(fresh)} new messages)"
        # Checked per batch with C-level passes; only a bad batch is walked to name the culprit.
        types = set(map(type, fresh))
        objects: list[tuple[int, ObjectDescriptor]] = []
        if not types <= _PAYLOAD_TYPES:
            allowed = _PAYLOAD_TYPES if self.objects is None else _OBJECT_PAYLOAD_TYPES
            bad = next((m for m in fresh if type(m) not in allowed), None)
            if bad is not None:
                return f"bad payload from sender {pos}: {type(bad).__name__} of size ?"
            problem = self._check_objects(pos, have, fresh, objects)
            if problem:
                return problem
        nulls = fresh.count(None) if _NULL_TYPE in types else 0
        weightless = nulls + len(objects)
        if weightless < len(fresh):
            if objects:
                total = sum(len(m) for m in fresh if type(m) is bytes)
            else:
                total = sum(map(len, filter(None, fresh) if nulls else fresh))  # type: ignore[arg-type]
            limit = self.config.max_message_size
            if total > limit:  # cheaper than max(); only then is each message measured
                longest = max(len(m) for m in fresh if type(m) is bytes)
                if longest > limit:
                    return f"bad payload from sender {pos}: bytes of size {longest}"
                # Within its byte window, or one message alone (it may exceed the window).
                if total > self.config.window_bytes and len(fresh) - weightless > 1:
                    return f"sender {pos} overran its byte window ({total} new bytes)"
        self._buf[pos].extend(fresh)
        received = have + len(fresh)
        if objects:
            assert self.objects is not None
            for k, d in objects:
                self.objects.take(pos, k, d)
        if self.objects is not None:
            received = self.objects.received_bound(pos, received)
        self._buf_nulls[pos] += nulls
        if nulls < len(fresh):  # where the next message of this sender will go
            last = len(fresh) - 1
            if nulls:
                while fresh[last] is None:
                    last -= 1
            following = (have + last + 1) * self.n_senders + pos
            if following > self._next_real:
                self._next_real = following
        if received > self.sst.mine["received_num"][pos]:  # type: ignore[index]
            if nulls == len(fresh) and self._nulls_wait(nulls):
                self._deferred_nulls += nulls
                self.sst.set_item("received_num", pos, received, urgent=False)
            else:
                self.sst.set_item("received_num", pos, received)
        return None

    def _nulls_wait(self, count: int) -> bool:
        """Whether the receipt of ``count`` null messages may wait for a push that goes
        anyway instead of making one due.

        Nobody's delivery waits for it: a null is never delivered, and a member passes a
        null's slot once it holds the null itself (see ``_frontier``), not once every member
        does. Only its sender's window does: the sender may have at most ``window_size``
        messages unacknowledged by some member, so at most a quarter of it waits here; the
        lazy push (``LAZY_PUSH_DELAY``) bounds the wait in time. A window under 8 defers
        nothing.
        """
        return self._deferred_nulls + count < self.config.window_size // 4

    def _check_objects(
        self, pos: int, k0: int, fresh: Sequence[Payload], out: list[tuple[int, ObjectDescriptor]]
    ) -> str | None:
        """Collect the descriptors among ``fresh`` (messages ``k0 ..`` of sender ``pos``) into
        ``out``, or say why the push is refused (then nothing of it is taken)."""
        assert self.objects is not None
        for i, m in enumerate(fresh):
            if type(m) is ObjectDescriptor:
                problem = self.objects.check(pos, k0 + i, m)
                if problem:
                    return f"bad object from sender {pos}: {problem}"
                out.append((k0 + i, m))
        return None

    def object_complete(self, pos: int, k: int, data: memoryview) -> None:
        """The object in sender ``pos``'s slot ``k`` is whole and checked here: its slot now
        counts as received (and with it what this member holds after it, up to the next
        object not whole here). Frozen counts stay frozen: after the wedge, it is beyond the trim."""
        objects = self.objects
        if objects is None or self.wedged or not objects.complete(pos, k, data):
            return
        held = self._buf_base[pos] + len(self._buf[pos])
        received = objects.received_bound(pos, held)
        if received > self.sst.mine["received_num"][pos]:  # type: ignore[index]
            self.sst.set_item("received_num", pos, received)

    def take_object_work(self) -> list[StartSending | ObjectDescriptor]:
        """Objects due for the node's transfer engine, in the order they must be admitted:
        this member's own to start, others' descriptors to announce."""
        objects = self.objects
        if objects is None:
            return []
        if objects.not_due:
            buf, base = self._buf, self._buf_base
            objects.release(ordering.delivery_frontier([base[p] + len(buf[p]) for p in range(self.n_senders)]))
        if not objects.due:
            return []
        due, objects.due = objects.due, []
        return due

    # ---------------------------------------------------------------- stability
    def _frontier(self) -> int:
        """The first global index not deliverable here: below it, every slot holds a stable
        message or a null message this member holds.

        A null is never delivered, so its slot needs no stability, only this member's
        knowledge that the slot is empty (its sender's stream is FIFO: holding the null,
        this member holds every message of that sender before it). A real message still
        waits until every member holds it. After a failure the survivors deliver exactly
        the messages within the trim, and every real message below any member's frontier is
        among them: each was stable (so within every survivor's counts), and a slot passed
        as a null is a null for everyone. A receiver may now hold about twice the window of
        a busy sender's messages undelivered while it waits for an idle sender's nulls
        (another member passed them), still bounded by that sender's own window. Waiting for the stability of nulls cost a hop: an
        idle member's nulls answering a push (out, nulls back, their receipts back) were
        stable a hop after the push itself."""
        counts = self.sst.vector_min("received_num")
        # Passed slots (nulls, ahead of stability) stay passed: never below the buffers' bases.
        counts = list(map(max, counts, self._buf_base))
        nulls = self._buf_nulls
        if any(nulls):
            held = self.sst.mine["received_num"]
            for pos in range(self.n_senders):
                if nulls[pos] and counts[pos] < held[pos]:  # type: ignore[index]
                    counts[pos] = self._past_nulls(pos, counts[pos], held[pos])  # type: ignore[index]
        return ordering.delivery_frontier(counts)

    def _past_nulls(self, pos: int, c: int, held: int) -> int:
        """How far sender ``pos``'s slots can be passed from ``c`` (passable up to there)
        through the null messages held here, up to ``held`` (what this member counts as
        received of that sender: a large object not whole here stops it).

        Each slot is looked at once: the run found is kept (``_null_scan``) with whether a
        real message ended it, and a later call goes on from its end."""
        lo, hi, real = self._null_scan[pos]
        if lo <= c <= hi:
            if real or hi >= held:
                return hi
            start = hi
        else:
            lo = start = c
        base = self._buf_base[pos]
        run = len(list(takewhile(_IS_NULL, islice(self._buf[pos], start - base, held - base))))
        hi = start + run
        self._null_scan[pos] = (lo, hi, hi < held)
        return hi

    def _stable_beyond_delivered(self, sst: SST) -> bool:
        if self.wedged:
            return False
        self._target = self._frontier()
        return self._target > self._delivered

    def _deliver_stable(self, sst: SST) -> None:
        target = self._target
        n = self.n_senders
        start = self._delivered
        buf, base, nulls = self._buf, self._buf_base, self._buf_nulls
        members, ranks = self.members, self.sender_ranks
        # Global indices start..target-1 interleave the senders round-robin. Each sender's
        # delivered run leaves its buffer as one list (the buffer keeps, as a new list, what
        # is not delivered yet: the most recently received, hence cache-hot, payloads), and
        # the batch lays the runs out when the application reads it (DeliveredBatch).
        parts: list[tuple[int, int, int, list[Payload]]] = []
        skipped = 0
        for pos in range(n):
            k0 = base[pos]
            k1 = ordering.count_before(target, pos, n)
            if k1 <= k0:
                continue
            seg = buf[pos]
            cut = k1 - k0
            if cut >= len(seg):
                buf[pos] = []
            elif len(seg) - cut <= cut:
                buf[pos] = seg[cut:]
                del seg[cut:]
            else:
                # More stays than goes (a backlog: the window is full, or stability lags):
                # copy the delivered run out instead, so a delivery costs what it delivers,
                # not what is still buffered (the rest only moves down, untouched).
                seg, rest = seg[:cut], seg
                del rest[:cut]
            if self.objects is not None:
                self.objects.fill(pos, k0, seg)
            parts.append((pos, members[ranks[pos]], k0, seg))
            base[pos] = k1
            if nulls[pos]:
                dropped = seg.count(None)
                nulls[pos] -= dropped
                skipped += dropped
        out = DeliveredBatch(start, target, n, parts, skipped)
        self._delivered = target
        sst.set("delivered_num", target)
        if len(out):  # a stretch of nulls moves the frontier but gives the app nothing to do
            last = self._deliveries[-1] if self._deliveries else None
            if last is not None and last.frontier == start and type(last.messages) is DeliveredBatch:
                # A second step before the batch was handed over (own nulls sent in the same
                # evaluation passed what the first left): one batch, one upcall.
                out = last.messages.followed_by(target, parts, skipped)
                self._deliveries[-1] = Delivery(self.shard, target, out, self.vid)
            else:
                self._deliveries.append(Delivery(self.shard, target, out, self.vid))
        self._check_window()

    def _receipts_moved(self) -> bool:
        """Whether the slowest member's receipt of this member's messages moved since the
        last call."""
        pos = self.my_pos
        if pos is None:
            return False
        slowest = min(row["received_num"][pos] for row in self.sst.rows)  # type: ignore[index]
        if slowest <= self._slowest_receipt:
            return False
        self._slowest_receipt = slowest
        return True

    def _check_window(self) -> None:
        """Tell the app the window reopened, if its sends were held back and it has room now."""
        if self._blocked and self.send_capacity() > 0 and self.window_bytes_free() > 0:
            self._blocked = False
            self._window_opened = True

    # --------------------------------------------------------------- persistence
    def set_persisted(self, bound: int) -> None:
        """This member's log now holds every version below ``bound`` on disk."""
        if bound > self.sst.mine["persisted"]:  # type: ignore[operator]
            self.sst.set("persisted", bound)

    def _persisted_beyond_reported(self, sst: SST) -> bool:
        return sst.column_min("persisted") > self._persisted_reported

    def _report_persisted(self, sst: SST) -> None:
        self._persisted_reported = sst.column_min("persisted")
        self._persisted_frontiers.append(self._persisted_reported)

    def _stable_beyond_reported(self, sst: SST) -> bool:
        return sst.column_min("delivered_num") > self._stable_reported

    def _report_stable(self, sst: SST) -> None:
        self._stable_reported = sst.column_min("delivered_num")
        self._stable_moved = True

    def take_delivered_everywhere(self) -> int | None:
        """How many global indices every member has delivered, if that moved since the last
        call."""
        if not self._stable_moved:
            return None
        self._stable_moved = False
        return self._stable_reported

    @property
    def persisted_frontier(self) -> int:
        return self._persisted_reported

    @property
    def delivered(self) -> int:
        return self._delivered

    # ------------------------------------------------------------- null messages
    def nulls_owed(self) -> int:
        """Null messages this member owes now. A function of its own row and ``_next_real``
        alone, kept against both (see :meth:`send_capacity`)."""
        if self.my_pos is None:
            return 0
        version = self.sst.version
        if version == self._owed_version and self._next_real == self._owed_next_real:
            return self._owed
        received = self.sst.mine["received_num"]
        owed = ordering.catch_up_count(self.my_pos, self.sent, received, self.n_senders)  # type: ignore[arg-type]
        ahead = ordering.nulls_to_pass(self.my_pos, self.sent, self._next_real, self.n_senders)
        if ahead > owed:
            owed = ahead
        self._owed, self._owed_version, self._owed_next_real = owed, version, self._next_real
        return owed

    def on_tick(self, now: float) -> None:
        """Send null messages if others' messages wait on this idle sender; push lazy row
        changes that waited long enough for a ride."""
        if self._lazy_at is not None and now >= self._lazy_at:
            self._lazy_due = True
        if self.my_pos is None or self.wedged:
            return
        # Same expression as wakeup_at(), so a tick at the requested time always acts.
        riding = now < self._null_due_at()
        if riding and not self._push_goes():
            return
        owed = self.nulls_owed()
        if owed > 0:  # the window only when something is owed (the common case owes nothing)
            owed = min(owed, self.send_capacity())
        if owed > 0:
            self._append_own([None] * owed, nulls=owed)
            self.nulls_sent += owed
            self._last_send_at = now
            if not riding:
                self._last_null_at = now

    def _push_goes(self) -> bool:
        """Whether owed nulls may go now, before ``_null_due_at``, in a push that goes
        anyway: an acknowledgement or this member's own messages. Riding along, they cost
        no push of their own (what the wait for ``_null_due_at`` saves), while the messages
        before them in the order would otherwise wait for the next null push: half a
        ``null_interval`` later, or this member's next message. Only where nulls may go at
        once (nothing of its own waits for the window: there they would take its places)."""
        if not self.config.immediate_nulls or self._app_waiting or self.resend:
            return False
        return self.sent > self._unpushed_from or self.sst.has_changes()

    def wakeup_at(self) -> float | None:
        """When this shard next needs a tick (to send nulls), if at all.

        Not while the window is full: a tick could not send, and asking for one at a time
        already past would spin the driver's timer until a push reopens the window. That push
        is an event, after which :meth:`evaluate` sends what is due or this asks again.
        """
        lazy = self._lazy_at if not self._lazy_due else None
        if self.my_pos is None or self.wedged or self.nulls_owed() == 0 or self.send_capacity() <= 0:
            return lazy
        at = self._null_due_at()
        return at if lazy is None or at < lazy else lazy

    def _null_due_at(self) -> float:
        """When owed null messages may go. At once when this member has nothing of its own
        waiting to be sent (and sent no nulls in the last half ``null_interval``): its next
        message may be a while off, and meanwhile every later message of the others would
        wait for its turn (at 1 msg/ms from one sender, up to 1 ms per message; between the
        ticks of paced senders, a tick). Otherwise only once it has sent nothing for
        ``null_interval``: while its own messages wait for the window, nulls would take
        their places."""
        if self.config.immediate_nulls and not self._app_waiting and not self.resend:
            # At most one null push per half interval: with one busy sender, each of its
            # pushes would otherwise draw a push of nulls from every idle member and an ack
            # of those from every other member (a third more frames and wake-ups per push).
            return max(self._last_send_at, self._last_null_at + self.config.null_interval / 2)
        return self._last_send_at + self.config.null_interval

    # --------------------------------------------------------------------- drain
    def evaluate(self, now: float) -> None:
        """Run predicates (stability), resend what the last view trimmed, send due nulls."""
        self.sst.evaluate()
        self._drain_resend(now)
        self.on_tick(now)
        self.sst.evaluate()
        # The window's base moves with the slowest member's receipts as well as with this
        # member's deliveries, and a receipt of own nulls comes with no delivery (their slots
        # were passed when they were sent). Only on such progress: a sender held back by
        # something else (its objects' quota) is not told of room it does not have at every
        # flush.
        if self._blocked and self._receipts_moved():
            self._check_window()
        if self._lazy_at is None and not self.wedged and len(self.members) > 1 and self.sst.lazy_pending():
            self._lazy_at = now + LAZY_PUSH_DELAY

    def take_persisted(self) -> int | None:
        """The persistence frontier if it moved since the last call."""
        if not self._persisted_frontiers:
            return None
        latest = self._persisted_frontiers[-1]
        self._persisted_frontiers.clear()
        return latest

    def drain(self) -> tuple[list[ShardPush], list[Delivery], bool]:
        """Pushes to send to every other member, deliveries, and whether the window opened."""
        pushes: list[ShardPush] = []
        pos = self.my_pos
        if pos is not None and self.sent > self._unpushed_from:
            end = self.sent
            buf = self._buf[pos]
            base = self._buf_base[pos]
            start = self._unpushed_from
            if base > start and len(self.members) == 1:
                start = base  # delivered, and held by every member: there is no other
            step = self.config.max_batch
            for lo in range(start, end, step):
                hi = min(end, lo + step)
                if lo >= base:
                    msgs = tuple(buf[lo - base : hi - base])
                else:
                    # Own slots passed here before they went out (see _frontier): only nulls,
                    # since a real message is passed once every member holds it.
                    msgs = (None,) * (min(hi, base) - lo) + tuple(buf[: max(0, hi - base)])
                row = self.sst.drain_push() if hi == end else None
                pushes.append(ShardPush(self.vid, self.shard, self.my_rank, row, lo, msgs))
            self._unpushed_from = end
        if not pushes:
            row = self.sst.drain_push(lazy=self._lazy_due)
            if row is not None:
                pushes.append(ShardPush(self.vid, self.shard, self.my_rank, row, self.sent, ()))
        if not self.sst.lazy_pending():  # nothing waits for a ride (any more)
            self._deferred_nulls = 0
            if self._lazy_at is not None:  # it rode along
                self._lazy_at = None
                self._lazy_due = False
        deliveries, self._deliveries = self._deliveries, []
        opened, self._window_opened = self._window_opened, False
        return pushes, deliveries, opened

    def pending_deliveries(self) -> int:
        return len(self._deliveries)

    def peers(self) -> tuple[int, ...]:
        return tuple(m for r, m in enumerate(self.members) if r != self.my_rank)

    # ------------------------------------------------------------- view change
    def wedge(self) -> tuple[int, ...]:
        """Stop sending, receiving and delivering; return the final receive counts."""
        self.wedged = True
        self._blocked = False
        return tuple(self.sst.mine["received_num"])  # type: ignore[arg-type]

    def deliver_to_trim(self, trim: tuple[int, ...]) -> tuple[Delivery | None, list[OwnPayload]]:
        """Deliver exactly the messages within ``trim`` that are not delivered yet.

        Returns the final delivery (global order, skipping each sender's messages beyond its
        trim) and this member's own payloads beyond the trim, to send again in the next view.
        Requires this member's counts to cover the trim (it survived, so they do).
        """
        n = self.n_senders
        if len(trim) != n:
            raise ValueError(f"trim {trim} does not match {n} senders")
        have = self.sst.mine["received_num"]
        if any(t > h for t, h in zip(trim, have)):  # type: ignore[arg-type]
            raise ValueError(f"trim {trim} exceeds what this member holds {have!r}")
        end = max(((c - 1) * n + s + 1 for s, c in enumerate(trim) if c), default=0)
        out: list[DeliveredMessage] = []
        buf, base, members, ranks = self._buf, self._buf_base, self.members, self.sender_ranks
        for g in range(self._delivered, end):
            k, pos = divmod(g, n)
            if k < trim[pos]:
                payload = buf[pos][k - base[pos]]
                if isinstance(payload, ObjectDescriptor):
                    assert self.objects is not None
                    out.append((g, members[ranks[pos]], k, self.objects.data_of(pos, k)))
                elif payload is not None:
                    out.append((g, members[ranks[pos]], k, payload))
        beyond: list[OwnPayload] = []
        if self.my_pos is not None:
            pos = self.my_pos
            start = max(trim[pos], base[pos])
            for i, p in enumerate(buf[pos][start - base[pos] :], start):
                if isinstance(p, ObjectDescriptor):
                    assert self.objects is not None
                    beyond.append(self.objects.resend_of(pos, i))  # resent as a new object
                elif p is not None:
                    assert isinstance(p, bytes)  # own small payloads: as sent
                    beyond.append(p)
        beyond.extend(self.resend)  # never sent in this view: still owed
        self.resend = []
        self._delivered = max(self._delivered, end)
        delivery = Delivery(self.shard, self._delivered, out, self.vid, final=True) if out else None
        return delivery, beyond

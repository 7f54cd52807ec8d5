"""One-sided SST row writes between co-located members: the writer stores its rows straight
into the peer's copy, a shared mapping, and the peer reads them there (no frame, no decode).

Why. An SST push is, in Derecho, ``SST::put``: a one-sided write of a row range into the same
offset of every peer's copy, which the peers' predicates then read locally. Over TCP a push has
to be a message; between processes on one host it need not be. So each direction of a
shared-memory pair has, next to its ring (``shm_ring``), a *row board*: the owner's SST rows
as the peer should see them, one slot per table (the view's group SST, each shard SST the two
share), laid out as fixed 64-bit words.

What goes where (``RowPlanner``; per push, decided once for all peers):

- a row-only push whose values are all ints (every column but the group SST's ``frozen`` and
  ``proposal``): written into the board, no frame at all. This is nearly every push of a
  receiver (``received_num``), every heartbeat.
- a push that carries messages, or a non-int value (a proposal, frozen counts: view changes
  only): one frame through the ring, as over TCP, its row widened to every int column known
  (see "Order" for why). Splitting a push with messages (the messages as a frame with
  ``row=None``, then the row into the board) was built first and measured: it cost more CPU
  per message than it saved (a second object to build, hand on and apply per push, at each
  peer), so a push whose messages need a frame anyway keeps its row in it.

A slot holds the *whole* int row (every int column pushed so far in the view), not the delta:
a reader may skip intermediate writes, and since these columns only grow, the latest row is
worth every earlier one together. The writer keeps that image per table (``RowImage``),
merged from the core's deltas.

Order. Today a peer applies one node's pushes in the order sent; the core relies on it in two
ways: messages arrive before a row that counts them (``received_num``: a later row-only push
must not overtake the frame that carried them), and a non-int value (a proposal) arrives with
the int columns written with it. Both hold here because the writer
writes the ring before the board, and the reader snapshots the board first and then loads the
ring's head, and hands the snapshot up only once it consumed the ring up to that head: every
frame written before the row it read goes first (x86 total store order: the owner's ring head
store precedes its slot stores, and the reader's loads are not reordered with each other). A
snapshot may still come after a frame written later than it; then its push counter is not
newer and the core drops it, which loses nothing because that frame's row was widened to
every int column (the frame supersedes the snapshot); a message-only frame (a batch split
over pushes) has no row. A frame needs widening only if a board write came since the last
frame that carried the whole row: otherwise every value is in frames, applied in order.

The board itself (slots, their seqlock, how the peer reads them, wake-ups, memory ordering)
is ``shm_board``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from runtime.core.messages import GroupPush, ShardPush
from runtime.core.sst_rows import RowDelta, Value
from runtime.drivers.shm_board import Column, TableKey, describe
from runtime.drivers.transport import RowPush
from runtime.wire.codec import frame

__all__ = ["Column", "PushPlan", "RowImage", "RowPlanner", "TableKey", "image_frame", "int_value"]

_I64 = 1 << 63
_INT_ONLY = frozenset({int})
_LAYOUTS = itertools.count(1)  # layout ids, unique in the process (a slot knows which it holds)


def int_value(value: object) -> int | None:
    """The width of ``value`` as a board column (0: a scalar int), or None if it is not one
    (not an int, a bool, or out of the signed 64-bit range: such a push travels as a frame)."""
    if type(value) is int:
        return 0 if -_I64 <= value < _I64 else None
    if type(value) is tuple and value and _INT_ONLY.issuperset(map(type, value)):
        return len(value) if -_I64 <= min(value) and max(value) < _I64 else None
    return None


@dataclass(slots=True)
class RowImage:
    """The writer's whole int row of one table: what every slot of it holds."""

    key: TableKey
    columns: list[Column] = field(default_factory=list)
    where: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (offset, width)
    values: list[int] = field(default_factory=list)
    seq: int = 0
    layout: int = 0  # a fresh id when a column is added (the descriptor changes)
    descriptor: bytes = b""
    boarded: bool = False  # written to boards since the last frame that carried the whole row
    pending: dict[str, Value] = field(default_factory=dict)  # latest values of pushes that were frames

    def note(self, delta: RowDelta) -> None:
        """A delta that travels as a frame: remembered (one C-level dict update), folded into
        the layout only when the board or a widened frame needs the image."""
        self.pending.update(delta.values)
        self.seq = delta.seq

    def fold(self) -> None:
        """Fold the noted values in (non-int ones are not board columns: skipped)."""
        pending, self.pending = self.pending, {}
        seq = self.seq
        self.merge(RowDelta(0, seq, pending))

    def merge(self, delta: RowDelta) -> bool:
        """Take a delta of this row (the owner's own: values only grow); False if one of its
        values is not an int column (it is then left out: the push travels as a frame)."""
        ok = True
        for name, value in delta.values.items():
            width = int_value(value)
            if width is None:
                ok = False
                continue
            spot = self.where.get(name)
            if spot is None or spot[1] != width:
                self._add(name, width)
                spot = self.where[name]
            at, w = spot
            if w:
                self.values[at : at + w] = value  # type: ignore[assignment]
            else:
                self.values[at] = value  # type: ignore[assignment]
        self.seq = delta.seq
        return ok

    def _add(self, name: str, width: int) -> None:
        self.columns = [c for c in self.columns if c[0] != name] + [(name, width)]
        old = {n: self.values[at : at + (w or 1)] for n, (at, w) in self.where.items() if n != name}
        self.where, self.values = {}, []
        for n, w in self.columns:
            self.where[n] = (len(self.values), w)
            self.values.extend(old.get(n, [0] * (w or 1)))
        self.layout = next(_LAYOUTS)
        self.descriptor = describe(self.key, self.columns)

    def as_values(self) -> dict[str, Value]:
        out: dict[str, Value] = {}
        for name, (at, w) in self.where.items():
            out[name] = tuple(self.values[at : at + w]) if w else self.values[at]
        return out


class PushPlan:
    """How one push goes to a peer with a board: ``frame()`` through the ring first (None:
    no frame), then ``image`` into the board (None: nothing). The frame is encoded at the
    first peer that needs it (a node whose peers are all on TCP never encodes one)."""

    __slots__ = ("image", "wide", "_frame")

    def __init__(self, image: RowImage | None, wide: RowDelta | None) -> None:
        # (not the push itself: the push holds its plan, and a cycle would leave every push
        # of a busy node to the cyclic garbage collector)
        self.image = image
        self.wide = wide  # the row widened to every int column, for a push that is a frame
        self._frame: bytes | None = None

    def frame(self, push: RowPush) -> bytes | None:
        """The frame of ``push`` (whose plan this is) through the ring; None: no frame."""
        data = self._frame
        if data is None:
            if self.image is not None:
                return None
            wide = self.wide
            data = push.frame() if wide is None else frame(_replace_row(push.message, wide))
            self._frame = data
        return data


def _key(msg: ShardPush | GroupPush) -> TableKey:
    return (msg.vid, msg.shard if type(msg) is ShardPush else None, msg.rank)


class RowPlanner:
    """The writer's row images, and each push's plan, made once per push (cached on it)."""

    def __init__(self) -> None:
        self.images: dict[TableKey, RowImage] = {}
        self.top_vid = -1

    def plan(self, push: RowPush) -> PushPlan:
        """Merge ``push``'s row into its table's image (once) and say how it travels."""
        plan = push.cache
        if type(plan) is PushPlan:
            return plan
        msg = push.message
        row = msg.row
        if row is None or type(msg) is GroupPush:
            # Messages only (a long batch split over pushes), or the group's row: frames as
            # they are. A group push goes to the members not suspected, so a whole-row image
            # would hand a suspected peer values (a ballot) of pushes it was never sent
            # without the proposal that came with them; shard pushes go to every peer alike.
            plan = PushPlan(None, None)
        else:
            image = self._image(_key(msg))
            if type(msg) is ShardPush and msg.messages:  # a frame: its row noted, not merged
                board = False
                image.note(row)
            else:
                if image.pending:
                    image.fold()
                board = image.merge(row)
            if board:
                image.boarded = True
                plan = PushPlan(image, None)  # a row of ints alone: the board only
            else:  # messages, or a non-int value: a frame, its row widened to the whole image
                # (needed only if a board write since the last whole row may be overtaken)
                wide = None
                if image.boarded and not image.where.keys() <= row.values.keys():
                    image.fold()
                    wide = _widen(image, row)
                image.boarded = False
                plan = PushPlan(None, wide)
        push.cache = plan
        return plan

    def _image(self, key: TableKey) -> RowImage:
        image = self.images.get(key)
        if image is None:
            vid = key[0]
            if vid > self.top_vid:  # a new view: drop the images of views before the last
                self.top_vid = vid
                self.images = {k: v for k, v in self.images.items() if k[0] >= vid - 1}
            image = self.images[key] = RowImage(key)
        return image


def _widen(image: RowImage, row: RowDelta) -> RowDelta:
    return RowDelta(row.rank, row.seq, {**image.as_values(), **row.values})


def image_frame(image: RowImage) -> bytes:
    """``image`` as the frame of a row-only push (for a row the board has no room for)."""
    if image.pending:
        image.fold()
    vid, shard, rank = image.key
    row = RowDelta(rank, image.seq, image.as_values())
    return frame(GroupPush(vid, rank, row) if shard is None else ShardPush(vid, shard, rank, row, 0, ()))


def _replace_row(msg: ShardPush | GroupPush, row: RowDelta | None) -> ShardPush | GroupPush:
    if type(msg) is ShardPush:
        return ShardPush(msg.vid, msg.shard, msg.rank, row, msg.first, msg.messages)
    assert row is not None
    return GroupPush(msg.vid, msg.rank, row)

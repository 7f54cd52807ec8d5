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

Slot layout (``SLOT_SIZE`` bytes at ``BOARD_HEADER + index * SLOT_SIZE``), 8-byte little-endian
words: ``lock`` (a seqlock: odd while the owner writes), ``seq`` (the row's push counter, the
one the core's ``RowDelta`` carries), ``nvals``, ``dlen``, then ``nvals`` signed values, then
``dlen`` bytes of descriptor: msgpack ``[vid, rank, [type, subgroup, shard] | nil, [[column,
width], ...]]`` (width 0: a scalar), rewritten only when the layout changes. Board header:
``magic``, slot count, slot size, the 16-byte token the ring's offer carries; on their own
cache lines ``gen`` (bumped after every slot write) and ``used`` (slots ever claimed).

Reading (``RowCopy``): the peer's ring reader, woken by the ring's doorbell, sees ``gen`` moved,
reads each slot whose lock changed (lock, header, values and descriptor copied with one
``bytes()``, lock again: equal and even, or the slot is skipped: the write in progress bumps
``gen`` when done, so it is read then), and hands the transport's frames handler the same
``ShardPush``/``GroupPush`` (row only, ``messages=()``) a frame would have carried. The core
checks it as it checks a frame (rank against the sender's id, column types and widths); the
board is the authenticated peer's and nobody else's, but not trusted beyond that.

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

Wake-ups: the ring's, shared (``shm_link``): after a batch of slot writes the owner bumps
``gen``, fences and rings the doorbell only if the reader said it sleeps; the reader, before
sleeping, also checks ``gen``. One ring per peer per loop turn at most.

Memory ordering assumed: x86-64 TSO, as the ring (``shm_ring``). Single aligned 8-byte stores
(``memoryview.cast("Q")``) are atomic; the seqlock needs stores to stay in order (lock odd,
data, lock even) and loads to stay in order (lock, data, lock), which TSO gives with no fence.
ARM would need ``dmb ishst`` between the odd lock store and the data and before the even one,
and ``dmb ishld`` after the first lock load and before the second (release/acquire on
``gen``), none of which Python can issue: so boards, like rings, exist only on x86-64
(``shm_ring.SUPPORTED``), and elsewhere pushes travel as frames.
"""

from __future__ import annotations

import itertools
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Sequence

import msgpack

from runtime.core.layout import ShardId
from runtime.core.messages import GroupPush, ShardPush
from runtime.core.sst_rows import RowDelta, Value
from runtime.drivers.shm_ring import RingError
from runtime.drivers.transport import RowPush
from runtime.wire.codec import frame

BOARD_MAGIC = 0x3153_574F_5244_5244  # b"DRDROWS1" little-endian; bump with the layout
BOARD_HEADER = 4096
SLOTS = 64
SLOT_SIZE = 2048
BOARD_SIZE = BOARD_HEADER + SLOTS * SLOT_SIZE
SLOT_HEAD = 32  # lock, seq, nvals, dlen
MAX_VALUES = (SLOT_SIZE - SLOT_HEAD) // 8
_I64 = 1 << 63
_INT_ONLY = frozenset({int})
_LAYOUTS = itertools.count(1)  # layout ids, unique in the process (a slot knows which it holds)

_HEAD = struct.Struct("<QQQ")  # a slot's seq, nvals, dlen (its lock is read as one word, apart)

# Word indices of the board header fields.
_MAGIC, _SLOTS, _SLOT_SIZE, _TOKEN0, _TOKEN1, _GEN, _USED = 0, 1, 2, 3, 4, 8, 16

TableKey = tuple[int, "ShardId | None", int]
"""``(vid, shard or None for the group SST, rank)``: one row of one table of one view."""

Column = tuple[str, int]
"""``(name, width)``; width 0 is a scalar column."""


def _token_words(token: bytes) -> tuple[int, int]:
    if len(token) != 16:
        raise RingError("a board token is 16 bytes")
    return int.from_bytes(token[:8], "little"), int.from_bytes(token[8:], "little")


def int_value(value: object) -> int | None:
    """The width of ``value`` as a board column (0: a scalar int), or None if it is not one
    (not an int, a bool, or out of the signed 64-bit range: such a push travels as a frame)."""
    if type(value) is int:
        return 0 if -_I64 <= value < _I64 else None
    if type(value) is tuple and value and _INT_ONLY.issuperset(map(type, value)):
        return len(value) if -_I64 <= min(value) and max(value) < _I64 else None
    return None


def describe(key: TableKey, columns: Sequence[Column]) -> bytes:
    """A slot's descriptor: which row of which table its values are, and their columns."""
    vid, shard, rank = key
    where = None if shard is None else [shard.type_name, shard.subgroup, shard.shard]
    return msgpack.packb([vid, rank, where, [[n, w] for n, w in columns]], use_bin_type=True)


@dataclass(frozen=True, slots=True)
class SlotLayout:
    """A decoded descriptor."""

    vid: int
    rank: int
    shard: ShardId | None
    columns: tuple[Column, ...]
    nvals: int


def parse_descriptor(data: bytes) -> SlotLayout:
    """Check and decode a descriptor a peer wrote (``ValueError`` if it is not one)."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"undecodable descriptor: {exc}") from None
    if not isinstance(obj, list) or len(obj) != 4:
        raise ValueError("a descriptor is [vid, rank, shard, columns]")
    vid, rank, where, cols = obj
    if type(vid) is not int or type(rank) is not int or vid < 0 or rank < 0:
        raise ValueError("bad vid or rank")
    shard = None
    if where is not None:
        if not (
            isinstance(where, list)
            and len(where) == 3
            and type(where[0]) is str
            and type(where[1]) is int
            and type(where[2]) is int
        ):
            raise ValueError("bad shard")
        shard = ShardId(where[0], where[1], where[2])
    if not isinstance(cols, list):
        raise ValueError("bad columns")
    columns: list[Column] = []
    n = 0
    for c in cols:
        if not (isinstance(c, list) and len(c) == 2 and type(c[0]) is str and type(c[1]) is int and c[1] >= 0):
            raise ValueError("bad column")
        columns.append((c[0], c[1]))
        n += c[1] or 1
    return SlotLayout(vid, rank, shard, tuple(columns), n)


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


class _Segment:
    """A mapped board file; ``create`` (owner) or ``attach`` (peer)."""

    __slots__ = ("path", "_mm", "mem", "words")

    def __init__(self, path: str, mm: mmap.mmap) -> None:
        self.path = path
        self._mm = mm
        self.mem = memoryview(mm)
        self.words = self.mem.cast("Q")

    @staticmethod
    def _create(path: str, token: bytes) -> mmap.mmap:
        t0, t1 = _token_words(token)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, BOARD_SIZE)
            mm = mmap.mmap(fd, BOARD_SIZE)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        words = memoryview(mm).cast("Q")
        words[_SLOTS], words[_SLOT_SIZE], words[_TOKEN0], words[_TOKEN1] = SLOTS, SLOT_SIZE, t0, t1
        words[_MAGIC] = BOARD_MAGIC  # last: whoever sees it sees the rest
        words.release()
        return mm

    @staticmethod
    def _attach(path: str, token: bytes) -> mmap.mmap:
        """Open the peer's board; ``RingError`` unless it is a regular file of our user, mode
        0600, of the board's size, holding the magic, the geometry and the offer's token."""
        t0, t1 = _token_words(token)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise RingError(f"cannot open {path}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RingError(f"{path} is not a regular file")
            if st.st_uid != os.getuid():
                raise RingError(f"{path} belongs to uid {st.st_uid}, not ours ({os.getuid()})")
            if st.st_mode & 0o077:
                raise RingError(f"{path} has mode {stat.S_IMODE(st.st_mode):o}, not 600")
            if st.st_size != BOARD_SIZE:
                raise RingError(f"{path} has {st.st_size} bytes, not a row board's {BOARD_SIZE}")
            mm = mmap.mmap(fd, BOARD_SIZE, prot=mmap.PROT_READ)  # the peer only reads
        finally:
            os.close(fd)
        words = memoryview(mm).cast("Q")
        head = (words[_MAGIC], words[_SLOTS], words[_SLOT_SIZE], words[_TOKEN0], words[_TOKEN1])
        words.release()
        if head != (BOARD_MAGIC, SLOTS, SLOT_SIZE, t0, t1):
            mm.close()
            raise RingError(f"{path} does not hold the row board the peer announced")
        return mm

    def close(self) -> None:
        if self._mm.closed:
            return
        self.words.release()
        self.mem.release()
        try:
            self._mm.close()
        except BufferError:  # a view outlived its read: the GC unmaps it later
            pass

    @property
    def closed(self) -> bool:
        return self._mm.closed


class RowBoard(_Segment):
    """The owner's board for one peer: slots claimed per table, written under their seqlock."""

    __slots__ = ("slots", "laid", "gen", "used", "_fmt")

    def __init__(self, path: str, mm: mmap.mmap) -> None:
        super().__init__(path, mm)
        self.slots: dict[TableKey, int] = {}
        self.laid: list[int] = [0] * SLOTS  # per slot: the layout id its descriptor is
        self.gen = 0
        self.used = 0
        self._fmt: dict[int, struct.Struct] = {}

    @classmethod
    def create(cls, path: str, token: bytes) -> RowBoard:
        """Make the board's file (mode 0600, which must not exist) and map it."""
        return cls(path, cls._create(path, token))

    def _slot(self, key: TableKey) -> int | None:
        index = self.slots.get(key)
        if index is not None:
            return index
        taken = set(self.slots.values())
        if len(taken) >= SLOTS:  # full: give back the slots of views before the last two
            top = max(k[0] for k in self.slots)
            self.slots = {k: i for k, i in self.slots.items() if k[0] >= top - 1}
            taken = set(self.slots.values())
        free = next((i for i in range(SLOTS) if i not in taken), None)
        if free is None:
            return None
        self.slots[key] = free
        if free >= self.used:
            self.used = free + 1
            self.words[_USED] = self.used
        return free

    def write(self, image: RowImage) -> bool:
        """Store ``image`` into its slot; False if it has no room (then send it as a frame).
        The caller bumps ``gen`` (``publish``) once after a batch of writes."""
        if image.pending:
            image.fold()  # its values as of its push counter
        n = len(image.values)
        if n > MAX_VALUES or SLOT_HEAD + 8 * n + len(image.descriptor) > SLOT_SIZE or not n:
            return False
        index = self._slot(image.key)
        if index is None:
            return False
        base = BOARD_HEADER + index * SLOT_SIZE
        w = base >> 3
        words = self.words
        lock = words[w]
        words[w] = lock + 1  # odd: a write in progress
        if self.laid[index] != image.layout:
            self.laid[index] = image.layout
            words[w + 2] = n
            words[w + 3] = len(image.descriptor)
            start = base + SLOT_HEAD + 8 * n
            self.mem[start : start + len(image.descriptor)] = image.descriptor
        words[w + 1] = image.seq
        fmt = self._fmt.get(n)
        if fmt is None:
            fmt = self._fmt[n] = struct.Struct(f"<{n}q")
        fmt.pack_into(self.mem, base + SLOT_HEAD, *image.values)
        words[w] = lock + 2  # even: done (TSO: after the stores above)
        return True

    def publish(self) -> None:
        """Tell the reader slots changed (after the writes: it reads ``gen`` before slots)."""
        self.gen += 1
        self.words[_GEN] = self.gen


class RowCopy(_Segment):
    """The peer's read-only view of an owner's board."""

    __slots__ = ("seen_gen", "last", "_layouts", "bad")

    def __init__(self, path: str, mm: mmap.mmap) -> None:
        super().__init__(path, mm)
        self.seen_gen = 0
        self.last = [0] * SLOTS  # per slot: the lock value last read
        # per descriptor: its layout, the values' format, (column, start, end or -1 for a scalar)
        self._layouts: dict[bytes, tuple[SlotLayout, struct.Struct, tuple[tuple[str, int, int], ...]]] = {}
        self.bad = 0  # slots whose descriptor did not decode

    @classmethod
    def attach(cls, path: str, token: bytes) -> RowCopy:
        return cls(path, cls._attach(path, token))

    def changed(self) -> bool:
        return self.words[_GEN] != self.seen_gen

    def read(self) -> list[Any]:
        """The rows written since the last read, as the pushes a frame would have carried
        (``ShardPush``/``GroupPush``, row only), in slot order. A slot being written is
        skipped: its write bumps ``gen`` when done, and the next read takes it."""
        words = self.words
        self.seen_gen = words[_GEN]  # before the slots (see the module docstring)
        used = min(words[_USED], SLOTS)
        out: list[Any] = []
        mem = self.mem
        last = self.last
        for index in range(used):
            base = BOARD_HEADER + index * SLOT_SIZE
            w = base >> 3
            lock = words[w]  # one aligned 8-byte load (struct reads bytes one at a time)
            if lock == last[index] or lock & 1:
                continue
            seq, n, dlen = _HEAD.unpack_from(mem, base + 8)
            if n > MAX_VALUES or SLOT_HEAD + 8 * n + dlen > SLOT_SIZE:
                if words[w] == lock:
                    last[index] = lock
                    self.bad += 1
                continue
            blob = bytes(mem[base + SLOT_HEAD : base + SLOT_HEAD + 8 * n + dlen])
            if words[w] != lock:
                continue  # overwritten while copied: read again at the next gen
            last[index] = lock
            push = self._push(seq, n, blob)
            if push is not None:
                out.append(push)
        return out

    def _push(self, seq: int, n: int, blob: bytes) -> Any:
        desc = blob[8 * n :]
        known = self._layouts.get(desc)
        if known is None:
            try:
                layout = parse_descriptor(desc)
            except ValueError:
                self.bad += 1
                return None
            if layout.nvals != n:
                self.bad += 1
                return None
            if len(self._layouts) > 4 * SLOTS:
                self._layouts.clear()
            spans = tuple((name, at, at + width if width else -1) for name, at, width in _offsets(layout.columns))
            known = self._layouts[desc] = (layout, struct.Struct(f"<{n}q"), spans)
        layout, fmt, spans = known
        vals = fmt.unpack_from(blob)
        row = RowDelta(layout.rank, seq, {name: vals[a] if b < 0 else vals[a:b] for name, a, b in spans})
        if layout.shard is None:
            return GroupPush(layout.vid, layout.rank, row)
        return ShardPush(layout.vid, layout.shard, layout.rank, row, 0, ())


def _offsets(columns: Sequence[Column]) -> list[tuple[str, int, int]]:
    """``(name, first value index, width)`` per column."""
    out = []
    at = 0
    for name, width in columns:
        out.append((name, at, width))
        at += width or 1
    return out

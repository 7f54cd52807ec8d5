"""A row board: the shared mapping one member's SST rows are written into for one co-located
peer (the owner writes, the peer reads; ``shm_rows`` decides what goes there and why).

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

import mmap
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import msgpack

from runtime.core.layout import ShardId
from runtime.core.messages import GroupPush, ShardPush
from runtime.core.sst_rows import RowDelta
from runtime.drivers.shm_segment import RingError, attach_segment, create_segment, token_words

if TYPE_CHECKING:
    from runtime.drivers.shm_rows import RowImage

BOARD_MAGIC = 0x3153_574F_5244_5244  # b"DRDROWS1" little-endian; bump with the layout
BOARD_HEADER = 4096
SLOTS = 64
SLOT_SIZE = 2048
BOARD_SIZE = BOARD_HEADER + SLOTS * SLOT_SIZE
SLOT_HEAD = 32  # lock, seq, nvals, dlen
MAX_VALUES = (SLOT_SIZE - SLOT_HEAD) // 8
_HEAD = struct.Struct("<QQQ")  # a slot's seq, nvals, dlen (its lock is read as one word, apart)

# Word indices of the board header fields.
_MAGIC, _SLOTS, _SLOT_SIZE, _TOKEN0, _TOKEN1, _GEN, _USED = 0, 1, 2, 3, 4, 8, 16

TableKey = tuple[int, "ShardId | None", int]
"""``(vid, shard or None for the group SST, rank)``: one row of one table of one view."""

Column = tuple[str, int]
"""``(name, width)``; width 0 is a scalar column."""


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


class _Mapped:
    """A mapped board file; ``create`` (owner) or ``attach`` (peer)."""

    __slots__ = ("path", "_mm", "mem", "words")

    def __init__(self, path: str, mm: mmap.mmap) -> None:
        self.path = path
        self._mm = mm
        self.mem = memoryview(mm)
        self.words = self.mem.cast("Q")

    @staticmethod
    def _create(path: str, token: bytes) -> mmap.mmap:
        t0, t1 = token_words(token)
        mm = create_segment(path, BOARD_SIZE)
        words = memoryview(mm).cast("Q")
        words[_SLOTS], words[_SLOT_SIZE], words[_TOKEN0], words[_TOKEN1] = SLOTS, SLOT_SIZE, t0, t1
        words[_MAGIC] = BOARD_MAGIC  # last: whoever sees it sees the rest
        words.release()
        return mm

    @staticmethod
    def _attach(path: str, token: bytes) -> mmap.mmap:
        """Map the peer's board read-only (the peer only reads); ``RingError`` unless
        ``shm_segment.attach_segment`` accepts the file and it holds the magic, the geometry
        and the offer's token."""
        t0, t1 = token_words(token)
        mm = attach_segment(path, BOARD_SIZE, f"a row board's {BOARD_SIZE}", writable=False)
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


class RowBoard(_Mapped):
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


class RowCopy(_Mapped):
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

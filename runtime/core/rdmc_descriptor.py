"""What names and describes one large object on its way through the block pipeline (RDMC).

A large object travels as two things: a small :class:`ObjectDescriptor`, which goes through the
shard's ordered multicast like any message (so every member learns it, and its place in the
total order), and the object's bytes, cut into blocks that move by an RDMC schedule
(:mod:`runtime.core.rdmc_schedule`) under the transfer engine (:mod:`runtime.core.rdmc_transfer`).

The descriptor carries everything a receiver needs before the first block arrives: the size
(so the receiver allocates its buffer once, at the right size, and can check every block's
length), the block size and schedule kind (so every member computes the same plan), the
ordered member list (rank 0 is the sender) and a digest of the whole object (so a receiver
never hands on bytes that were corrupted or forged on the way, whoever relayed them).

Descriptors are checked when built: a malformed one cannot exist, so a wire decoder that
builds one from a peer's frame gets a :class:`TransferUsageError` for a bad frame (a bad frame
is an error value of the driver, not a state of the engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from blake3 import blake3

from runtime.core.rdmc_schedule import ScheduleKind
from runtime.errors import Unavailable, UsageError

__all__ = [
    "DIGEST_SIZE",
    "Digested",
    "Hasher",
    "OwnPayload",
    "ObjectDescriptor",
    "ObjectId",
    "ObjectTooLarge",
    "TooManyObjects",
    "TransferUsageError",
    "byte_view",
    "describe",
    "object_digest",
    "object_hasher",
]

DIGEST_SIZE = 32
"""Bytes of the object digest: BLAKE3 (default length). Collision resistant, so a relay cannot
hand on other bytes under the sender's descriptor, and the fastest such hash here by far: the
``blake3`` package's vectorised build (AVX-512/AVX2/NEON, chosen at run time) hashes at
0.18 ms/MB of CPU on the bench machine (Xeon with SHA extensions), OpenSSL's sha256 at 0.61
and CPython's blake2b at 1.67 (100 MB in 1 MiB updates, best of 5). Every member hashes every
byte of every object (the sender once, each receiver as blocks arrive), so this was the
largest per-byte cost of an object at every node. It releases the GIL on large inputs, as
hashlib does (the driver's worker thread relies on that)."""


class Hasher(Protocol):
    """What the engine needs of an incremental hash."""

    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


def object_hasher() -> Hasher:
    """An empty incremental hash of the descriptor's kind (a receiver feeds it block by block)."""
    return blake3()


class TransferUsageError(UsageError, ValueError):
    """The engine was called wrongly by its own node: a malformed descriptor, an object this
    node is not a member of, an object opened twice or of an epoch already ended, data of
    another size than described. A bug of the caller (driver, or a decoder that must refuse
    the frame); retrying the same cannot help."""


class TooManyObjects(Unavailable):
    """This node already holds as many large objects in flight as it may (``max_objects``, or
    ``max_bytes`` of their sizes together): the object was not started or opened, nothing was
    allocated. Wait for objects in flight to finish, then retry; or raise the limit."""

    applied = False


class ObjectTooLarge(UsageError, ValueError):
    """The object is bigger than this node accepts (``max_object_size``) or would be cut into
    more blocks than it tracks (``max_blocks``: raise the block size). Retrying cannot help."""


@dataclass(frozen=True, slots=True, order=True)
class ObjectId:
    """Names one object transfer: the sending node, its sequence number among that node's
    objects of the epoch in one stream, the epoch (view id), and the stream. The epoch is part
    of the name because a view change ends every transfer of the old view (a resent object is a
    new transfer), and stale credits or blocks of an ended epoch must never be taken for the new
    one's. A stream is one ordered channel of the sender (the ordered multicast of one shard):
    a sender's objects are announced in ``seq`` order within a stream, but a member of two
    shards learns the two shards' descriptors in no fixed order relative to each other."""

    sender: int
    seq: int
    vid: int
    stream: int = 0

    def __post_init__(self) -> None:
        for name in ("sender", "seq", "vid", "stream"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TransferUsageError(f"ObjectId.{name} must be an int >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class ObjectDescriptor:
    """Everything every member must agree on to move one object.

    ``members`` is the ordered member list of the transfer, sender first: a node's rank in the
    schedule is its position here. ``size`` may be 0 (one empty block: the schedule still runs,
    so an empty object is delivered the same way as any other).
    """

    oid: ObjectId
    members: tuple[int, ...]
    size: int
    block_size: int
    kind: ScheduleKind
    digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.oid, ObjectId):
            raise TransferUsageError(f"oid must be an ObjectId, got {self.oid!r}")
        members = self.members
        if not isinstance(members, tuple) or not members:
            raise TransferUsageError(f"members must be a non-empty tuple of node ids, got {members!r}")
        if any(not isinstance(m, int) or isinstance(m, bool) or m < 0 for m in members):
            raise TransferUsageError(f"members must be node ids (ints >= 0), got {members!r}")
        if len(set(members)) != len(members):
            raise TransferUsageError(f"members must be distinct, got {members!r}")
        if members[0] != self.oid.sender:
            raise TransferUsageError(f"the sender {self.oid.sender} must be members[0], got {members!r}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise TransferUsageError(f"size must be an int >= 0, got {self.size!r}")
        bs = self.block_size
        if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
            raise TransferUsageError(f"block_size must be an int >= 1, got {bs!r}")
        if not isinstance(self.kind, ScheduleKind):
            raise TransferUsageError(f"kind must be a ScheduleKind, got {self.kind!r}")
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            raise TransferUsageError(f"digest must be {DIGEST_SIZE} bytes, got {self.digest!r}")

    @property
    def blocks(self) -> int:
        """How many blocks the object is cut into (at least one, even when empty)."""
        return max(1, -(-self.size // self.block_size))

    def block_span(self, block: int) -> tuple[int, int]:
        """``(offset, length)`` of a block in the object: every block is ``block_size`` long
        but the last, which holds the rest."""
        if not 0 <= block < self.blocks:
            raise IndexError(f"block {block} out of range 0..{self.blocks - 1}")
        offset = block * self.block_size
        return offset, min(self.block_size, self.size - offset)

    def rank_of(self, node: int) -> int | None:
        """The node's rank in this transfer (0: the sender), None if it is not a member."""
        try:
            return self.members.index(node)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Digested:
    """A large payload whose object digest was already computed, off the node's loop.

    Digesting is the one whole-object pass a sender makes (~0.1-0.2 s per 40 MB here): on the
    node's event loop, a GiB object would stall heartbeats past ``timeouts.suspicion_ms``. So
    the real driver digests each large payload in a worker thread (``hashlib`` releases the GIL
    on large buffers) and hands the core this, in the payload's place in its submit order; the
    core then never reads the bytes but to slice blocks. A plain ``bytes`` payload above the
    threshold is digested inline (the simulator's choice: deterministic, and its objects are
    small). ``len()`` is the payload's, so the core's size checks treat both alike."""

    data: bytes | bytearray
    digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.data, (bytes, bytearray)):
            raise TransferUsageError(f"Digested.data must be bytes or bytearray, got {type(self.data).__name__}")
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            raise TransferUsageError(f"Digested.digest must be {DIGEST_SIZE} bytes, got {self.digest!r}")

    def __len__(self) -> int:
        return len(self.data)

    @classmethod
    def of(cls, data: bytes | bytearray) -> Digested:
        """``data`` with its digest (one pass: call it where a pass over the bytes may block)."""
        return cls(data, object_digest(data))


OwnPayload = bytes | Digested
"""What a member multicasts: bytes, or a large payload with its digest computed already."""


def byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A flat unsigned-byte view of ``data`` without copying it (NumPy arrays and typed
    memoryviews included, if C-contiguous), so blocks can be sliced out of it by byte offset."""
    view = memoryview(data)
    if not view.c_contiguous:
        raise TransferUsageError("data must be a C-contiguous buffer")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def object_digest(data: bytes | bytearray | memoryview) -> bytes:
    """The digest a descriptor carries: BLAKE3 of the whole object (``DIGEST_SIZE`` bytes)."""
    return blake3(data).digest()


def describe(
    oid: ObjectId,
    members: tuple[int, ...],
    data: bytes | bytearray | memoryview,
    block_size: int,
    kind: ScheduleKind = ScheduleKind.BINOMIAL,
    digest: bytes | None = None,
) -> ObjectDescriptor:
    """The descriptor of ``data`` sent by ``oid.sender`` to ``members``: one pass to digest
    it, unless its ``digest`` was computed already (elsewhere, off the loop)."""
    view = byte_view(data)
    return ObjectDescriptor(
        oid, members, view.nbytes, block_size, kind, object_digest(view) if digest is None else digest
    )

"""The wire form of a large object's descriptor inside a shard push.

A descriptor travels in the ordered multicast in a message slot of its own (where a payload or
a null message would be), so every member learns it in its place in the total order. In the
msgpack body it is an array (a payload is ``bin``, a null message ``nil``), so a push without
objects is encoded and checked exactly as before and one with objects costs a look at each of
them only. Everything a peer sends is checked here; the object's place (its sender, epoch,
stream, members) is checked by the shard against its own view (``runtime.core.smc_objects``).
"""

from __future__ import annotations

from typing import Any

from runtime.core.rdmc_descriptor import ObjectDescriptor, ObjectId, TransferUsageError
from runtime.core.rdmc_schedule import ScheduleKind
from runtime.errors import WireError
from runtime.wire.checks import describe, nat

__all__ = ["descriptor_from_wire", "descriptor_to_wire", "pack_default"]

_FIELDS = 9
_KINDS = {kind.value: kind for kind in ScheduleKind}
MAX_WIRE_MEMBERS = 4096
"""More members than any shard has; a longer list is refused before it is looked at."""


def descriptor_to_wire(d: ObjectDescriptor) -> list[Any]:
    """``[sender, seq, vid, stream, members, size, block_size, kind, digest]``."""
    oid = d.oid
    return [oid.sender, oid.seq, oid.vid, oid.stream, list(d.members), d.size, d.block_size, d.kind.value, d.digest]


def pack_default(value: object) -> Any:
    """msgpack's ``default`` hook for the one non-plain value a push may hold: called only for
    values msgpack cannot pack itself, so a push of plain payloads pays nothing for it."""
    if isinstance(value, ObjectDescriptor):
        return descriptor_to_wire(value)
    raise TypeError(f"cannot pack {type(value).__name__}")


def descriptor_from_wire(value: object, what: str) -> ObjectDescriptor:
    """The descriptor in ``value``, or :class:`WireError` naming what is wrong with it."""
    if type(value) is not list or len(value) != _FIELDS:
        raise WireError(f"{what} must be a {_FIELDS}-field object descriptor, got {describe(value)}")
    sender, seq, vid, stream, members, size, block_size, kind, digest = value
    if type(members) is not list or len(members) > MAX_WIRE_MEMBERS:
        raise WireError(f"{what}.members must be a list of node ids, got {describe(members)}")
    chosen = _KINDS.get(kind) if type(kind) is str else None
    if chosen is None:
        raise WireError(f"{what}.kind must be one of {sorted(_KINDS)}, got {describe(kind)}")
    if type(digest) is not bytes:
        raise WireError(f"{what}.digest must be bytes, got {describe(digest)}")
    try:
        oid = ObjectId(
            nat(sender, f"{what}.sender"),
            nat(seq, f"{what}.seq"),
            nat(vid, f"{what}.vid"),
            nat(stream, f"{what}.stream"),
        )
        return ObjectDescriptor(
            oid,
            tuple(nat(m, f"{what}.members[]") for m in members),
            nat(size, f"{what}.size"),
            nat(block_size, f"{what}.block_size"),
            chosen,
            digest,
        )
    except TransferUsageError as exc:
        raise WireError(f"{what}: {exc}") from None

"""Frames two members exchange over their TLS connection to agree on shared-memory rings.

They travel only between members (on connections whose certificate proved the sender's node
id) and only the transport reads them (``runtime.drivers.shm_transport``); the node driver and
the core never see them. One direction of a pair is set up at a time, by its producer (the
owner of the ring): the consumer asks with a ``ShmProbe`` (same host, same user?), the owner
answers with a ``ShmOffer`` naming its segment, the consumer opens and checks it and replies
with a ``ShmAnswer``, and the owner's ``ShmSwitch`` is the last frame of that direction on
TCP: the consumer reads the ring from there on, so no frame overtakes an earlier one.

Large objects between such a pair (``runtime.drivers.shm_objects``): the sender offers the
segment it writes an object into (``ShmObjectOffer``, to that object's members only), each
member answers once it mapped it or could not (``ShmObjectAnswer``: the owner unlinks the file
when all have), a member that reads the object in place tells every other member
(``ShmInPlace``), which from then on tells it a block is there (``ShmBlockInPlace``) instead of
sending the block's bytes.
A peer of an older release decodes these as unknown frames and drops them: it never answers
a probe, and the pair stays on TCP.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from runtime.core.rdmc_descriptor import ObjectId
from runtime.errors import WireError
from runtime.wire.checks import blob, flag, nat, text

TAG_SHM_SETUP: Final = 36


class ShmStep(enum.IntEnum):
    PROBE = 1
    OFFER = 2
    ANSWER = 3
    SWITCH = 4
    OBJECT_OFFER = 5
    OBJECT_ANSWER = 6
    IN_PLACE = 7
    BLOCK_IN_PLACE = 8
    SEGMENT_FREE = 9


@dataclass(frozen=True, slots=True)
class ShmProbe:
    """ "Send to me through shared memory, if we share a host and a user": ``host`` is the
    sender's host key (machine id and boot id), ``uid`` its user."""

    host: str
    uid: int


@dataclass(frozen=True, slots=True)
class ShmOffer:
    """The owner's ring for this pair: ``base`` is the path of its files without suffix,
    ``token`` the 16 random bytes its header holds (proof it is the segment the owner made)."""

    base: str
    capacity: int
    token: bytes


@dataclass(frozen=True, slots=True)
class ShmAnswer:
    """The consumer opened and checked the ring at ``base`` (``accepted``), or why not."""

    base: str
    accepted: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ShmSwitch:
    """The owner's last frame on TCP for this direction: what follows is in the ring."""

    base: str


@dataclass(frozen=True, slots=True)
class ShmObjectOffer:
    """The sender's segment for object ``oid`` (``ObjectId`` fields): ``base`` its path
    without suffix, ``size`` the object's bytes, ``token`` the 16 random bytes its header holds."""

    oid: ObjectId
    base: str
    size: int
    token: bytes


@dataclass(frozen=True, slots=True)
class ShmObjectAnswer:
    """The member mapped the segment ``token`` offered for ``oid`` (``mapped``), or could not.
    The token names the segment even after the owner let go of the object: a late answer
    still makes the member counted, or told the segment is gone."""

    oid: ObjectId
    mapped: bool
    token: bytes


@dataclass(frozen=True, slots=True)
class ShmInPlace:
    """This member reads ``oid`` in place in its sender's segment: send it no block bytes."""

    oid: ObjectId


@dataclass(frozen=True, slots=True)
class ShmBlockInPlace:
    """Block ``block`` (``length`` bytes) of ``oid`` is in its sender's segment: the block
    frame of a member that reads the object in place."""

    oid: ObjectId
    block: int
    length: int


@dataclass(frozen=True, slots=True)
class ShmSegmentFree:
    """Nothing at this member refers to the owner's segment ``token`` any more: the owner may
    write its next object there (``kept``: still mapped here), or must not offer it again."""

    token: bytes
    kept: bool


ShmSetup = (
    ShmProbe
    | ShmOffer
    | ShmAnswer
    | ShmSwitch
    | ShmObjectOffer
    | ShmObjectAnswer
    | ShmInPlace
    | ShmBlockInPlace
    | ShmSegmentFree
)


def _oid(o: ObjectId) -> list[int]:
    return [o.sender, o.seq, o.vid, o.stream]


def _dec_oid(f: list[Any], what: str) -> ObjectId:
    try:
        return ObjectId(nat(f[2], what), nat(f[3], what), nat(f[4], what), nat(f[5], what))
    except ValueError as exc:
        raise WireError(f"{what}: {exc}") from None


def encode_shm(m: ShmSetup) -> list[Any]:
    if isinstance(m, ShmProbe):
        return [TAG_SHM_SETUP, ShmStep.PROBE.value, m.host, m.uid]
    if isinstance(m, ShmOffer):
        return [TAG_SHM_SETUP, ShmStep.OFFER.value, m.base, m.capacity, m.token]
    if isinstance(m, ShmAnswer):
        return [TAG_SHM_SETUP, ShmStep.ANSWER.value, m.base, m.accepted, m.reason]
    if isinstance(m, ShmSwitch):
        return [TAG_SHM_SETUP, ShmStep.SWITCH.value, m.base]
    if isinstance(m, ShmSegmentFree):
        return [TAG_SHM_SETUP, ShmStep.SEGMENT_FREE.value, m.token, m.kept]
    if isinstance(m, ShmObjectOffer):
        return [TAG_SHM_SETUP, ShmStep.OBJECT_OFFER.value, *_oid(m.oid), m.base, m.size, m.token]
    if isinstance(m, ShmObjectAnswer):
        return [TAG_SHM_SETUP, ShmStep.OBJECT_ANSWER.value, *_oid(m.oid), m.mapped, m.token]
    if isinstance(m, ShmInPlace):
        return [TAG_SHM_SETUP, ShmStep.IN_PLACE.value, *_oid(m.oid)]
    return [TAG_SHM_SETUP, ShmStep.BLOCK_IN_PLACE.value, *_oid(m.oid), m.block, m.length]


_ARITY: Final = {
    ShmStep.PROBE: 3,
    ShmStep.OFFER: 4,
    ShmStep.ANSWER: 4,
    ShmStep.SWITCH: 2,
    ShmStep.OBJECT_OFFER: 8,
    ShmStep.OBJECT_ANSWER: 7,
    ShmStep.IN_PLACE: 5,
    ShmStep.BLOCK_IN_PLACE: 7,
    ShmStep.SEGMENT_FREE: 3,
}


def decode_shm(f: list[Any]) -> ShmSetup:
    try:
        step = ShmStep(nat(f[1], "ShmSetup.step"))
    except ValueError:
        raise WireError(f"ShmSetup.step {f[1]!r} is not one of {[s.value for s in ShmStep]}") from None
    if len(f) - 1 != _ARITY[step]:
        raise WireError(f"ShmSetup {step.name} needs {_ARITY[step]} fields after the tag, got {len(f) - 1}")
    if step is ShmStep.PROBE:
        return ShmProbe(text(f[2], "ShmProbe.host"), nat(f[3], "ShmProbe.uid"))
    if step is ShmStep.OFFER:
        return ShmOffer(text(f[2], "ShmOffer.base"), nat(f[3], "ShmOffer.capacity"), blob(f[4], "ShmOffer.token"))
    if step is ShmStep.ANSWER:
        return ShmAnswer(text(f[2], "ShmAnswer.base"), flag(f[3], "ShmAnswer.accepted"), text(f[4], "ShmAnswer.reason"))
    if step is ShmStep.SWITCH:
        return ShmSwitch(text(f[2], "ShmSwitch.base"))
    if step is ShmStep.SEGMENT_FREE:
        return ShmSegmentFree(blob(f[2], "ShmSegmentFree.token"), flag(f[3], "ShmSegmentFree.kept"))
    oid = _dec_oid(f, f"Shm {step.name} object id")
    if step is ShmStep.OBJECT_OFFER:
        return ShmObjectOffer(
            oid, text(f[6], "ShmObjectOffer.base"), nat(f[7], "ShmObjectOffer.size"), blob(f[8], "ShmObjectOffer.token")
        )
    if step is ShmStep.OBJECT_ANSWER:
        return ShmObjectAnswer(oid, flag(f[6], "ShmObjectAnswer.mapped"), blob(f[7], "ShmObjectAnswer.token"))
    if step is ShmStep.IN_PLACE:
        return ShmInPlace(oid)
    return ShmBlockInPlace(oid, nat(f[6], "ShmBlockInPlace.block"), nat(f[7], "ShmBlockInPlace.length"))

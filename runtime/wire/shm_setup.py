"""Frames two members exchange over their TLS connection to agree on shared-memory rings.

They travel only between members (on connections whose certificate proved the sender's node
id) and only the transport reads them (``runtime.drivers.shm_transport``); the node driver and
the core never see them. One direction of a pair is set up at a time, by its producer (the
owner of the ring): the consumer asks with a ``ShmProbe`` (same host, same user?), the owner
answers with a ``ShmOffer`` naming its segment, the consumer opens and checks it and replies
with a ``ShmAnswer``, and the owner's ``ShmSwitch`` is the last frame of that direction on
TCP: the consumer reads the ring from there on, so no frame overtakes an earlier one.

A peer of an older release decodes these as unknown frames and drops them: it never answers
a probe, and the pair stays on TCP.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from runtime.errors import WireError
from runtime.wire.checks import blob, flag, nat, text

TAG_SHM_SETUP: Final = 36


class ShmStep(enum.IntEnum):
    PROBE = 1
    OFFER = 2
    ANSWER = 3
    SWITCH = 4


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


ShmSetup = ShmProbe | ShmOffer | ShmAnswer | ShmSwitch
SHM_SETUP_TYPES: Final = (ShmProbe, ShmOffer, ShmAnswer, ShmSwitch)


def encode_shm(m: ShmSetup) -> list[Any]:
    if isinstance(m, ShmProbe):
        return [TAG_SHM_SETUP, ShmStep.PROBE.value, m.host, m.uid]
    if isinstance(m, ShmOffer):
        return [TAG_SHM_SETUP, ShmStep.OFFER.value, m.base, m.capacity, m.token]
    if isinstance(m, ShmAnswer):
        return [TAG_SHM_SETUP, ShmStep.ANSWER.value, m.base, m.accepted, m.reason]
    return [TAG_SHM_SETUP, ShmStep.SWITCH.value, m.base]


_ARITY: Final = {ShmStep.PROBE: 3, ShmStep.OFFER: 4, ShmStep.ANSWER: 4, ShmStep.SWITCH: 2}


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
    return ShmSwitch(text(f[2], "ShmSwitch.base"))

"""Frames two members exchange over their TLS connection to connect an RDMA queue pair.

They travel only between members, on connections whose certificate proved the sender's node
id, and only the RDMA transport reads them (``runtime.drivers.rdma_transport``). An offer holds
what the peer needs to connect its queue pair to ours and to write into our ring copies (QP
number, PSN, LID, GID, and per memory region its address, rkey and length): the rkeys are
capabilities, so they are sent to that one peer and nowhere else. The exchange is symmetric:
each side offers once, connects on the other's offer and answers; a side switches its frames
to the ring on the other's accepting answer (both QPs are then ready to send), and its
``RdmaSwitch`` is its last frame on TCP, so no frame overtakes an earlier one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from runtime.errors import WireError
from runtime.wire.checks import blob, flag, nat, text

TAG_RDMA_SETUP: Final = 37
MAX_REGIONS: Final = 4


class RdmaStep(enum.IntEnum):
    OFFER = 1
    ANSWER = 2
    SWITCH = 3


@dataclass(frozen=True, slots=True)
class RdmaRegion:
    """One of the sender's registered memory regions: where, its remote key, how long."""

    addr: int
    rkey: int
    length: int


@dataclass(frozen=True, slots=True)
class RdmaOffer:
    """The sender's queue pair and ring copies for this pair (``regions``: its copy of its own
    ring to us, then its copy of our ring to it), each ring ``capacity`` bytes of data."""

    qp_num: int
    psn: int
    lid: int
    gid: bytes  # 16 bytes
    capacity: int
    regions: tuple[RdmaRegion, ...]


@dataclass(frozen=True, slots=True)
class RdmaAnswer:
    """The sender connected its queue pair to ours (``accepted``), or why not."""

    accepted: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RdmaSwitch:
    """The sender's last frame on TCP: what follows is in the ring."""


RdmaSetup = RdmaOffer | RdmaAnswer | RdmaSwitch
RDMA_SETUP_TYPES: Final = (RdmaOffer, RdmaAnswer, RdmaSwitch)


def encode_rdma(m: RdmaSetup) -> list[Any]:
    if isinstance(m, RdmaOffer):
        flat = [v for r in m.regions for v in (r.addr, r.rkey, r.length)]
        return [TAG_RDMA_SETUP, RdmaStep.OFFER.value, m.qp_num, m.psn, m.lid, m.gid, m.capacity, flat]
    if isinstance(m, RdmaAnswer):
        return [TAG_RDMA_SETUP, RdmaStep.ANSWER.value, m.accepted, m.reason]
    return [TAG_RDMA_SETUP, RdmaStep.SWITCH.value]


_ARITY: Final = {RdmaStep.OFFER: 7, RdmaStep.ANSWER: 3, RdmaStep.SWITCH: 1}


def _regions(value: object) -> tuple[RdmaRegion, ...]:
    if not isinstance(value, list) or len(value) % 3 or not 0 < len(value) <= 3 * MAX_REGIONS:
        raise WireError(f"RdmaOffer.regions must be 1 to {MAX_REGIONS} (addr, rkey, length) triples")
    words = [nat(v, "RdmaOffer.regions") for v in value]
    return tuple(RdmaRegion(*words[i : i + 3]) for i in range(0, len(words), 3))


def decode_rdma(f: list[Any]) -> RdmaSetup:
    try:
        step = RdmaStep(nat(f[1], "RdmaSetup.step"))
    except ValueError:
        raise WireError(f"RdmaSetup.step {f[1]!r} is not one of {[s.value for s in RdmaStep]}") from None
    if len(f) - 1 != _ARITY[step]:
        raise WireError(f"RdmaSetup {step.name} needs {_ARITY[step]} fields after the tag, got {len(f) - 1}")
    if step is RdmaStep.OFFER:
        gid = blob(f[5], "RdmaOffer.gid")
        if len(gid) != 16:
            raise WireError(f"RdmaOffer.gid must be 16 bytes, got {len(gid)}")
        return RdmaOffer(
            nat(f[2], "RdmaOffer.qp_num"),
            nat(f[3], "RdmaOffer.psn"),
            nat(f[4], "RdmaOffer.lid"),
            gid,
            nat(f[6], "RdmaOffer.capacity"),
            _regions(f[7]),
        )
    if step is RdmaStep.ANSWER:
        return RdmaAnswer(flag(f[2], "RdmaAnswer.accepted"), text(f[3], "RdmaAnswer.reason"))
    return RdmaSwitch()

"""A null receipt that this member's own message waits for is acknowledged at once, even when a
real message earlier in the order arrived after that own message.

``ShardMulticast._nulls_wait`` lets a receipt of nulls alone ride with the next push unless a
real message held here comes after them. The highest such message (``_real_top``) must only
grow: when a received real message earlier than this member's own last one lowered it, a null
between the two was acknowledged only by the lazy push (``LAZY_PUSH_DELAY``), and the own
message, which needs that acknowledgement to be stable at the other members, waited for it.
"""

from __future__ import annotations

import pytest

from runtime.core.smc import MulticastConfig
from tests.core.shard_net import ShardNet

pytestmark = pytest.mark.timeout(60)

Step = tuple[str, int, int]
"""("send", node, how many messages) or ("link", src, dst): deliver what waits on that link."""

# (members, steps, what every member delivers with no time passing). Node i's j-th message is
# b"i.j"; global slot of message j of the node at position p among n senders: j * n + p.
CASES: list[tuple[str, tuple[int, ...], list[Step], list[bytes]]] = [
    (
        "own c0 (slot 2), then a0 (slot 0) arrives; 2's null (slot 1) between",
        (1, 2, 3),
        [("send", 3, 1), ("send", 1, 1), ("link", 1, 3)],
        [b"1.0", b"3.0"],
    ),
    (
        "four members: own d0 (slot 3), then a0 (slot 0); nulls of 2 and 3 between",
        (1, 2, 3, 4),
        [("send", 4, 1), ("send", 1, 1), ("link", 1, 4)],
        [b"1.0", b"4.0"],
    ),
    (
        "own c0 c1 (slots 2, 5), then b0 (slot 1); 1's nulls (slots 0, 3) below and between",
        (1, 2, 3),
        [("send", 3, 2), ("send", 2, 1), ("link", 2, 3)],
        [b"2.0", b"3.0", b"3.1"],
    ),
]


def deliver_all_without_time(net: ShardNet) -> None:
    for _ in range(100):
        links = net.in_flight()
        if not links:
            return
        for src, dst in links:
            while net.deliver_one(src, dst):
                pass
    raise AssertionError("pushes did not settle")


@pytest.mark.parametrize(("members", "steps", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_own_message_does_not_wait_for_the_lazy_push(
    members: tuple[int, ...], steps: list[Step], expected: list[bytes]
) -> None:
    net = ShardNet(members, MulticastConfig(null_interval=10.0))  # no tick below: time stands
    for kind, a, b in steps:
        if kind == "send":
            assert net.send(a, *(b"%d.%d" % (a, j) for j in range(b))) == b
        else:
            while net.deliver_one(a, b):
                pass
    deliver_all_without_time(net)
    for m in members:
        assert net.payloads(m) == expected, f"node {m} waits for a lazy push"

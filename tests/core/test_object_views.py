"""Large objects across view changes, in the core: a member killed mid-object (the sender, a
relay, a receiver) leaves every survivor with the object delivered or with none of it, and a
surviving sender's trimmed object is sent again (as a new transfer) in the next view."""

from __future__ import annotations

import hashlib

import pytest

from runtime.core.object_policy import ObjectPolicy
from runtime.core.smc import MulticastConfig
from tests.core.group_net import GroupNet

POLICY = ObjectPolicy(threshold=1000, block_size=128, max_object_size=1 << 20, max_objects=8, window=2)
MULTICAST = MulticastConfig(window_size=50, null_interval=0.001, max_message_size=4096, objects=POLICY)
MEMBERS = (1, 2, 3, 4, 5)


def blob(size: int, seed: int) -> bytes:
    return b"".join(hashlib.blake2b(f"{seed}:{i}".encode()).digest() for i in range(-(-size // 64)))[:size]


def run_steps(net: GroupNet, steps: int) -> None:
    for _ in range(steps):
        if not net._one_step():
            net.advance(net.step_size)


CRASH_POINTS = [0, 3, 10, 25, 60, 120, 250, 500]
VICTIMS = [1, 2, 3, 5]  # the sender; binomial relays; the last receiver


@pytest.mark.parametrize("victim", VICTIMS)
@pytest.mark.parametrize("steps", CRASH_POINTS)
def test_a_member_killed_mid_object_leaves_it_delivered_everywhere_or_nowhere(victim: int, steps: int) -> None:
    net = GroupNet(MEMBERS, multicast=MULTICAST)
    big = blob(5000, steps)  # 40 blocks
    sent = [b"before", big, b"after"]
    assert net.send(1, *sent) == 3
    net.send(4, b"other")
    run_steps(net, steps)
    net.crash(victim)
    survivors = [m for m in MEMBERS if m != victim]

    def settled() -> bool:
        views = [net.last_view(m) for m in survivors]
        if any(v is None or victim in v.members for v in views):
            return False
        if victim != 1 and not all(big in net.payloads(m) for m in survivors):
            return False
        return all(b"other" in net.payloads(m) for m in survivors)

    assert net.run_until(settled, max_time=5.0), {m: len(net.payloads(m)) for m in survivors}
    net.run_for(0.2)
    lists = {m: net.payloads(m) for m in survivors}
    first = lists[survivors[0]]
    assert all(got == first for got in lists.values()), "survivors delivered different sequences"
    if victim == 1:
        assert first.count(big) <= 1  # its sender is gone: delivered everywhere or nowhere
    else:
        assert first.count(big) == 1  # delivered, or trimmed and sent again
    assert set(first) <= {*sent, b"other"}
    for m in survivors:
        objects = net.core(m).objects
        assert objects is not None and objects.engine.in_flight() == ()
    # Blocks and credits still on their way when the view ended are dropped without a word.
    assert not [r for m in survivors for r in net.rejected[m] if r.forged or "object" in r.reason]


def test_a_trimmed_object_is_resent_as_a_new_transfer_in_the_next_view() -> None:
    """The object reaches nobody before the view changes (its blocks are all held back), so the
    trim drops it everywhere; the sender sends it again in view 1 and every survivor delivers it
    there, once."""
    net = GroupNet(MEMBERS, multicast=MULTICAST)
    big = blob(3000, 99)
    for dst in MEMBERS[1:]:
        net.hold(1, dst)
    net.send(1, big)
    net.crash(5)
    net.release()
    survivors = (1, 2, 3, 4)
    assert net.run_until(lambda: all(big in net.payloads(m) for m in survivors), max_time=5.0)
    for m in survivors:
        assert net.payloads(m) == [big]
        assert net.delivered(m)[0][0] >= 1, "delivered in view 0, where no member held it"

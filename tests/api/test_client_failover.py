"""A client keeps calling through a member failure, and every ordered call applies once."""

from __future__ import annotations

import pytest

import derecho_actors as da
from tests.api.groups import address, running_groups
from tests.api.groups import client as client_of

pytestmark = pytest.mark.timeout(120)


@da.replicated
class Tally:
    def __init__(self) -> None:
        self.n = 0
        self.seen: list[int] = []

    @da.ordered
    def add(self, k: int) -> int:
        self.n += 1
        self.seen.append(k)
        return self.n

    @da.p2p
    def state(self) -> list[int]:
        return self.seen


def test_client_fails_over_and_applies_each_call_once() -> None:
    layout = da.Layout({Tally: da.ShardPolicy(min_nodes=2)})
    with running_groups(3, [Tally], layout, "failover", 1500) as groups:
        contacts = [address(g) for g in groups]
        with client_of(groups, contacts) as client:
            tally = client.handle(Tally)
            assert isinstance(tally, da.Handle), "clients and members share one Handle"
            first = [tally.add(i) for i in range(300)]
            first[50].get(timeout=20)
            groups[0].close()  # the client's member (and the leader) dies mid-stream
            rest = [tally.add(i) for i in range(300, 400)]
            for r in first + rest:
                replies = r.get(timeout=30)
                assert set(replies) <= {1, 2, 3} and replies
            states = [groups[0 + k].handle(Tally).state(node=n).get(timeout=10)[n] for k, n in ((1, 2), (2, 3))]
        assert states[0] == states[1]
        assert sorted(states[0]) == list(range(400)), "a call was lost or applied twice"
        assert states[0] == list(range(400)), "one client's calls must apply in their order"


def test_member_outside_the_shard_retries_through_a_new_relay_exactly_once() -> None:
    layout = da.Layout({Tally: da.ShardPolicy(min_nodes=2, max_nodes=3)})
    with running_groups(4, [Tally], layout, "relay", 1500) as groups:
        outsider = groups[3]
        assert outsider.my_shards() == []
        members = outsider.view.layout.members_of(outsider.handle(Tally).shard)
        relay = members[outsider.node_id % len(members)]
        tally = outsider.handle(Tally)
        calls = [tally.add(i) for i in range(300)]
        calls[30].get(timeout=20)
        groups[relay - 1].close()  # the relay dies with calls in flight
        for r in calls:
            assert r.wait_all(timeout=30)
        survivor = next(m for m in members if m != relay)
        state = outsider.handle(Tally).state(node=survivor).get(timeout=10)[survivor]
        assert state == list(range(300)), "a relayed call was lost, repeated or reordered"


def test_the_client_logs_how_long_it_really_tried(caplog: pytest.LogCaptureFixture) -> None:
    """A client closed after its 1 s connect_timeout, with retry_for=30: the log line says
    about one second, not thirty."""
    import logging
    import re
    import socket
    import time

    # A port bound here and never listened on: connections to it are refused, and no other
    # process (another test's node) can take it meanwhile, as it could a port found free.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    with held, caplog.at_level(logging.INFO, logger="derecho.client"):
        with pytest.raises(da.GroupClosed, match="within 1.0 s"):
            da.Client([f"127.0.0.1:{port}"], insecure=True, retry_for=30.0, connect_timeout=1.0)
        deadline = time.monotonic() + 10  # the client's thread logs once it sees it was closed
        while not [r for r in caplog.records if "reach the group after" in r.getMessage()]:
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
    line = next(r.getMessage() for r in caplog.records if "reach the group after" in r.getMessage())
    seconds = float(re.search(r"after ([0-9.]+) s", line).group(1))  # type: ignore[union-attr]
    assert 0.5 <= seconds < 5, line
    assert "closed" in line, line

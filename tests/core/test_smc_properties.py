"""Property tests: whatever order frames arrive in (FIFO per link), members agree.

Hypothesis picks the schedule: which member sends how much, which link delivers next, when
time passes. Whatever it picks, every member must deliver a prefix of one common sequence,
each sender's messages in its own order, and, once the network settles, everything sent.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.core.smc import MulticastConfig
from tests.core.shard_net import ShardNet

pytestmark = pytest.mark.timeout(120)

Action = tuple[str, int, int]

actions = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 4), st.integers(1, 6)),
        st.tuples(st.just("deliver"), st.integers(0, 30), st.integers(1, 3)),
        st.tuples(st.just("tick"), st.integers(0, 3), st.just(0)),
    ),
    max_size=80,
)


def _check_agreement(net: ShardNet, complete: bool, sent: dict[int, list[bytes]]) -> None:
    logs = [net.delivered[m] for m in net.members]
    longest = max(logs, key=len)
    for log in logs:
        assert log == longest[: len(log)], "members disagree on the delivered sequence"
    for m in net.members:
        for s in net.members:
            mine = [p for (_, sender, _, p) in net.delivered[m] if sender == s]
            assert mine == sent[s][: len(mine)], f"node {m} broke node {s}'s send order"
    if complete:
        for log in logs:
            assert len(log) == sum(len(v) for v in sent.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 5),
    window=st.sampled_from([1, 2, 5, 50]),
    batch=st.sampled_from([1, 3, 100]),
    null_interval=st.sampled_from([0.0, 0.01, 0.05]),
    script=actions,
)
def test_any_schedule_gives_agreement_and_completion(
    n: int, window: int, batch: int, null_interval: float, script: list[Action]
) -> None:
    members = tuple(range(10, 10 + n))
    net = ShardNet(members, MulticastConfig(window_size=window, max_batch=batch, null_interval=null_interval))
    sent: dict[int, list[bytes]] = {m: [] for m in members}
    backlog: dict[int, list[bytes]] = {m: [] for m in members}
    counter = 0
    for kind, a, b in script:
        if kind == "send":
            node = members[a % n]
            for _ in range(b):
                backlog[node].append(b"%d-%d" % (node, counter))
                counter += 1
            taken = net.send(node, *backlog[node])
            sent[node].extend(backlog[node][:taken])
            del backlog[node][:taken]
        elif kind == "deliver":
            links = net.in_flight()
            if links:
                src, dst = links[a % len(links)]
                for _ in range(b):
                    net.deliver_one(src, dst)
        else:
            net.tick(a * 0.01)
        _check_agreement(net, complete=False, sent=sent)
    # Drain: let the network settle, offering backlogged messages as windows open.
    for _ in range(1000):
        net.settle()
        if not any(backlog.values()):
            break
        for node in members:
            if backlog[node]:
                taken = net.send(node, *backlog[node])
                sent[node].extend(backlog[node][:taken])
                del backlog[node][:taken]
    assert not any(backlog.values())
    net.settle()
    _check_agreement(net, complete=True, sent=sent)

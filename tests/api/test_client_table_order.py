"""``ClientTable`` keeps its proxied calls oldest first: beyond ``max_proxied`` (calls whose
answers never all came) the oldest go, and a call taken again (a retry on a new connection)
counts as new."""

from __future__ import annotations

import time

import pytest

from derecho_actors.node.client_table import ClientTable, Proxied

pytestmark = pytest.mark.timeout(30)


class _Conn:
    identity = None
    address = "127.0.0.1:1"
    closed = False


def test_the_oldest_calls_go_first_and_a_retry_counts_as_new() -> None:
    t = ClientTable(max_in_flight=100, max_polls=2, wall_ns=time.monotonic_ns, max_proxied=3)
    s = t.state(_Conn())
    for i in range(3):
        t.add(s, (1, i), Proxied(s, "put", 0))
    t.add(s, (1, 0), Proxied(s, "put", 0))  # call 0 again: now the newest
    t.add(s, (1, 3), Proxied(s, "put", 0))  # one over: the oldest, call 1, goes
    assert list(t.proxies) == [(1, 2), (1, 0), (1, 3)]
    assert s.calls == {(1, 2), (1, 0), (1, 3)}
    t.drop((1, 0))
    for i in (4, 5):
        t.add(s, (1, i), Proxied(s, "put", 0))
    assert list(t.proxies) == [(1, 3), (1, 4), (1, 5)] and s.calls == set(t.proxies)

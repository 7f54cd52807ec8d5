"""Results too large to be carried, in-process nodes over TLS: a result over the frame limit
between members, or over what a contact lets one client have unread, reaches its caller as
``ResultTooLarge`` (the same from every replica), the call applied once; the links and the
view stay as they were, and a result just under each limit still arrives whole."""

from __future__ import annotations

import time
from typing import Iterator

import pytest

import derecho_actors as da
from derecho_actors.node.result_limits import ResultLimits
from tests.api.groups import client, running_groups

pytestmark = pytest.mark.timeout(240)

BIG = 100 * 1000 * 1000  # over the 64 MiB frame limit between members
CLIENT_BIG = 10 * 1000 * 1000  # over the 8 MiB a client may have unread, under the frame limit
CLIENT_BIGGER = 40 * 1000 * 1000  # the old code cut the client off for this one, and it retried for ever
BIN32 = 5  # msgpack's header of a bin of 64 KiB or more: the encoded result is this much larger


@da.replicated
class Blob:
    def __init__(self) -> None:
        self.made = 0

    @da.ordered
    def make(self, size: int) -> bytes:
        self.made += 1
        return bytes(size)

    @da.p2p
    def peek(self, size: int) -> bytes:
        return bytes(size)

    @da.ordered
    def count(self) -> int:
        return self.made


LAYOUT = da.Layout({Blob: da.ShardPolicy(min_nodes=3, max_nodes=3)})


@pytest.fixture(scope="module")
def groups() -> Iterator[list[da.Group]]:
    with running_groups(4, [Blob], LAYOUT, "large-results", 3000) as made:
        yield made


def members(groups: list[da.Group]) -> list[int]:
    view = groups[0].view
    assert view is not None
    return sorted(next(m for sid, m in view.layout.shards.items() if sid.type_name == "Blob"))


def outsider(groups: list[da.Group]) -> da.Group:
    """The node with no replica: its calls are relayed, and every answer reaches it in a frame."""
    return next(g for g in groups if g.node_id not in members(groups))


def views(groups: list[da.Group]) -> list[int]:
    return [g.view.vid if g.view is not None else -1 for g in groups]


def made(groups: list[da.Group]) -> int:
    """How many ``make`` calls ran, the same at every replica."""
    counts = groups[members(groups)[0] - 1].handle(Blob).count().wait_all(timeout=30)
    assert len(set(counts.values())) == 1 and len(counts) == 3, counts
    return next(iter(counts.values()))


def test_an_ordered_result_over_the_frame_limit_is_a_typed_error_and_the_group_stays(groups: list[da.Group]) -> None:
    before, vids = made(groups), views(groups)
    for caller in (groups[members(groups)[0] - 1], outsider(groups)):  # a member's call, a relayed one
        answers = caller.handle(Blob).make(BIG).wait_all(timeout=90)
        assert set(answers) == set(members(groups))
        for e in answers.values():  # every replica answered alike
            assert isinstance(e, da.ResultTooLarge) and isinstance(e, da.UsageError), answers
            assert f"is {BIG + BIN32} bytes encoded" in str(e) and "multicast.max_frame_bytes" in str(e)
            assert "return a smaller value" in str(e) and e.applied
    assert made(groups) == before + 2  # applied once each: its effects stay
    assert views(groups) == vids  # nobody was suspected: no view change


def test_a_p2p_result_over_the_frame_limit_is_a_typed_error(groups: list[da.Group]) -> None:
    vids = views(groups)
    with pytest.raises(da.ResultTooLarge, match=r"multicast\.max_frame_bytes"):
        outsider(groups).handle(Blob).peek(BIG).get(timeout=90)
    with pytest.raises(da.ResultTooLarge, match=r"multicast\.max_frame_bytes"):
        groups[members(groups)[0] - 1].handle(Blob).peek(BIG).get(timeout=90)
    assert set(outsider(groups).handle(Blob).peek(10).get(timeout=30).values()) == {bytes(10)}
    assert views(groups) == vids


def test_a_result_just_under_the_frame_limit_arrives(groups: list[da.Group]) -> None:
    size = ResultLimits().member - BIN32
    vids = views(groups)
    got = outsider(groups).handle(Blob).peek(size).get(timeout=90)
    assert [len(v) for v in got.values()] == [size]
    assert views(groups) == vids


def test_a_clients_result_over_its_backlog_is_a_typed_error_at_once(groups: list[da.Group]) -> None:
    before, vids = made(groups), views(groups)
    with client(groups) as c:
        started = time.monotonic()
        for size in (CLIENT_BIG, CLIENT_BIGGER):
            with pytest.raises(da.ResultTooLarge, match=r"limits\.client_max_backlog_bytes"):
                c.handle(Blob).make(size).get(timeout=60)
        with pytest.raises(da.ResultTooLarge, match=r"limits\.client_max_backlog_bytes"):
            c.handle(Blob).peek(CLIENT_BIG).get(timeout=60)
        assert time.monotonic() - started < 20  # not a call timeout after endless retries
        assert set(c.handle(Blob).peek(10).get(timeout=30).values()) == {bytes(10)}  # still connected
    assert made(groups) == before + 2
    assert views(groups) == vids


def test_a_clients_result_just_under_its_backlog_arrives(groups: list[da.Group]) -> None:
    size = ResultLimits().client - BIN32
    with client(groups) as c:
        got = c.handle(Blob).make(size).get(timeout=60)
        assert {len(v) for v in got.values()} == {size}

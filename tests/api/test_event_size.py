"""An event too large for a watch answer is refused at ``da.emit`` (``EmitError`` at the
caller, the same at every replica), so no replica ever answers a watch with a frame over the
limit (that took its connections, and the shard, down) and no client is cut off and polling
for ever. In-process nodes over TLS."""

from __future__ import annotations

import threading
from typing import Iterator

import pytest

import derecho_actors as da
from derecho_actors.replica.events import MAX_EVENT_BYTES
from tests.api.groups import running_groups

pytestmark = pytest.mark.timeout(90)


@da.replicated
class Feed:
    def __init__(self) -> None:
        self.calls = 0

    @da.ordered
    def post(self, size: int) -> int:
        self.calls += 1
        da.emit(b"e" * size)
        return size

    @da.ordered
    def count(self) -> int:
        return self.calls


LAYOUT = da.Layout({Feed: da.ShardPolicy(min_nodes=3, max_nodes=3)})


@pytest.fixture(scope="module")
def groups() -> Iterator[list[da.Group]]:
    with running_groups(3, [Feed], LAYOUT, "event-size", 2000) as made:
        yield made


def test_an_event_over_the_limit_fails_its_call_everywhere_and_one_under_reaches_a_remote_watch(
    groups: list[da.Group],
) -> None:
    caller = groups[0]
    vid = caller.view.vid if caller.view is not None else None
    watch = caller.watch(Feed, since=None, node=3, hold=1.0)  # answers cross a connection
    sizes: list[int] = []

    def follow() -> None:
        for event in watch:
            sizes.append(len(event.value))
            return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    threading.Event().wait(0.3)
    over = caller.handle(Feed).post(MAX_EVENT_BYTES + 1024)
    with pytest.raises(da.EmitError, match=r"over the 4194304-byte limit for one event"):
        over.get(timeout=30)
    under = MAX_EVENT_BYTES - 1024
    assert caller.handle(Feed).post(under).wait_all(timeout=30) == {1: under, 2: under, 3: under}
    follower.join(30)
    assert sizes == [under]  # the refused event was never recorded: the watch sees the next one
    assert caller.handle(Feed).count().wait_all(timeout=30) == {1: 2, 2: 2, 3: 2}  # both calls ran once
    assert all(g.view is not None and g.view.vid == vid for g in groups)

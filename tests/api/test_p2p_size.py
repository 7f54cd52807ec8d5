"""A P2P call travels in one frame to the replica it asks: one too large for the frame limit
is refused at the caller with ``PayloadTooLarge``, never written (a frame over the limit makes
the receiver drop the caller's connections and the group remove the caller). In-process nodes
over TLS, with a small frame limit so the sizes stay cheap."""

from __future__ import annotations

from typing import Iterator

import pytest

import derecho_actors as da
from tests.api.groups import running_groups

pytestmark = pytest.mark.timeout(90)

FRAME = 4 << 20  # multicast.max_frame_bytes in these groups


@da.replicated
class Echo:
    @da.p2p
    def size(self, data: bytes) -> int:
        return len(data)

    @da.ordered
    def ping(self) -> int:
        return 1


LAYOUT = da.Layout({Echo: da.ShardPolicy(min_nodes=3, max_nodes=3)})


@pytest.fixture(scope="module")
def groups() -> Iterator[list[da.Group]]:
    extra = {
        "multicast.max_frame_bytes": str(FRAME),
        "multicast.max_message_size": str(1 << 20),
        "rdmc.block_size": str(1 << 20),
    }
    with running_groups(3, [Echo], LAYOUT, "p2p-size", 2000, extra=extra) as made:
        yield made


def test_a_p2p_call_beyond_one_frame_is_refused_at_the_caller_and_the_group_stays(groups: list[da.Group]) -> None:
    caller = groups[0]
    vid = caller.view.vid if caller.view is not None else None
    with pytest.raises(da.PayloadTooLarge, match=r"P2P call travels in one frame.*multicast.max_frame_bytes"):
        caller.handle(Echo).size(b"x" * FRAME, node=2)
    just_under = FRAME - (128 << 10)  # above max_message_size: P2P calls are bounded by the frame only
    assert caller.handle(Echo).size(b"x" * just_under, node=2).wait_all(timeout=30) == {2: just_under}
    assert set(caller.handle(Echo).ping().wait_all(timeout=30)) == {1, 2, 3}
    assert all(g.view is not None and g.view.vid == vid and len(g.members) == 3 for g in groups)

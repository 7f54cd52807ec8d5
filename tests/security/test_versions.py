"""Wire protocol versions: every hello says which protocol its sender speaks; a member or
client speaking another one is refused with one line naming both, while the group goes on.
Real node processes on loopback, TLS on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import msgpack
import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import LocalCluster
from runtime.security.certs import ensure_cluster_certs
from runtime.wire import codec
from runtime.wire.codec import frame
from runtime.wire.control import COMPATIBLE_PROTOCOLS, MEMBER_PROTOCOLS, PROTOCOL_VERSION, Hello
from tests.security.rogue import Conn, client_context, node_context, warnings_of

pytestmark = pytest.mark.timeout(120)


@da.replicated
class Box:
    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    @da.ordered
    def put(self, key: str, value: bytes) -> int:
        self.items[key] = value
        return len(self.items)


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    wd = tmp_path_factory.mktemp("versions")
    with LocalCluster(3, [Box], da.Layout({Box: da.ShardPolicy(min_nodes=3)}), workdir=str(wd), cluster="ver") as c:
        ensure_cluster_certs(c.certs_dir, [9], clients=("old-client",), cluster="ver")
        yield c


def _refused(c: LocalCluster, ctx: object, hello: bytes) -> list[str]:
    with Conn(c.address(1), ctx) as conn:  # type: ignore[arg-type]
        conn.send_raw(hello)
        assert conn.wait_closed(5), "the node kept a connection speaking another protocol"
        return conn.goodbyes()


def test_a_member_speaking_another_protocol_is_refused_and_the_group_goes_on(trio: LocalCluster) -> None:
    c = trio
    future = PROTOCOL_VERSION + 98
    goodbyes = _refused(c, node_context(c.certs_dir, 9), frame(Hello(9, "ver", "member", 1, future)))
    assert goodbyes == [f"refused: wire protocol {future} is not compatible with {PROTOCOL_VERSION}"]
    lines = [w for w in warnings_of(c.workdir, [1]) if "wire protocol" in w]
    assert len(lines) == 1 and f"speaks wire protocol {future}" in lines[0] and "member 9" in lines[0], lines
    assert set(c.handle(Box).put("after", b"ok").get(timeout=20)) == {1, 2, 3}
    assert {m for m, _ in c.status(1)["members"]} == {1, 2, 3}


def test_a_client_from_before_versions_is_refused(trio: LocalCluster) -> None:
    c = trio
    old_hello = msgpack.packb([codec.TAG_HELLO, 77, "ver", "client", time.time_ns()])  # 4 fields: protocol 0
    data = len(old_hello).to_bytes(4, "big") + old_hello
    goodbyes = _refused(c, client_context(c.certs_dir, "old-client"), data)
    assert goodbyes == [f"refused: wire protocol 0 is not compatible with {PROTOCOL_VERSION}"]
    assert set(c.handle(Box).put("after-client", b"ok").get(timeout=20)) == {1, 2, 3}


def test_hello_round_trips_and_older_hellos_decode_as_protocol_0() -> None:
    hello = Hello(3, "c", "member", 5, PROTOCOL_VERSION)
    assert codec.decode(codec.encode(hello)) == hello
    old = codec.decode(msgpack.packb([codec.TAG_HELLO, 3, "c", "member", 5]))
    assert old == Hello(3, "c", "member", 5, 0)
    assert 0 not in COMPATIBLE_PROTOCOLS and PROTOCOL_VERSION in COMPATIBLE_PROTOCOLS
    with pytest.raises(Exception, match="Hello.protocol"):
        codec.decode(msgpack.packb([codec.TAG_HELLO, 3, "c", "member", 5, -1]))


def test_a_data_dir_from_another_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    from derecho_actors.node.disk_state import NodeDiskState
    from runtime.core.layout import ShardId
    from runtime.errors import RestartError

    disk = NodeDiskState(tmp_path, "c", 1, fsync=False)
    disk.record_lost({ShardId("T", 0, 0): (1, 2)})
    path = tmp_path / "lost.msgpack"
    data = msgpack.unpackb(path.read_bytes())
    data["format"] = 99
    path.write_bytes(msgpack.packb(data))
    with pytest.raises(RestartError, match="format 99; this release reads format .* move the file aside"):
        NodeDiskState(tmp_path, "c", 1, fsync=False).lost()


def test_protocol_2_is_refused_from_a_member_and_served_for_a_client(trio: LocalCluster) -> None:
    """Members of protocol 2 cannot read large objects' descriptors and blocks; a client's
    frames did not change, so a client of the previous release is still served."""
    c = trio
    assert (
        2 not in MEMBER_PROTOCOLS
        and PROTOCOL_VERSION in MEMBER_PROTOCOLS
        and {2, 3, 4, PROTOCOL_VERSION} <= COMPATIBLE_PROTOCOLS
    )
    goodbyes = _refused(c, node_context(c.certs_dir, 9), frame(Hello(9, "ver", "member", 1, 2)))
    assert goodbyes == [f"refused: wire protocol 2 is not compatible with {PROTOCOL_VERSION}"]
    with Conn(c.address(1), client_context(c.certs_dir, "old-client")) as conn:
        conn.send_raw(frame(Hello(78, "ver", "client", time.time_ns(), 2)))
        assert not conn.wait_closed(1), "a protocol-2 client was refused"

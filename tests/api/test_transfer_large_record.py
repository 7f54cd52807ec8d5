"""A persistent write larger than a state chunk (and than the frame limit) reaches a joiner:
the state transfer cuts the log record into pieces the joiner joins again. Before, the record
went in one chunk, a frame over the limit: the joiner took the source's stream as corrupt, the
source was removed and the group fell apart. In-process nodes over TLS, with a small frame
limit so the sizes stay cheap; and the joining side's checks, table-driven."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import msgpack
import pytest

import derecho_actors as da
from derecho_actors.node.transfer_stream import record_pieces
from derecho_actors.replica.messages import StatePart
from derecho_actors.replica.state import IncomingState
from derecho_actors.tools.cluster import _free_ports
from derecho_actors.wire.messages import ChunkKind
from runtime.errors import StateTransferError
from tests.api.groups import running_groups, tls_overrides

pytestmark = pytest.mark.timeout(120)

FRAME = 2 << 20
SMALL_FRAMES = {
    "multicast.max_frame_bytes": str(FRAME),
    "multicast.max_message_size": str(256 << 10),
    "rdmc.block_size": str(256 << 10),
    "persistence.transfer_chunk_bytes": str(256 << 10),
}


@da.replicated
class Docs:
    data = da.Persistent({})

    @da.ordered
    def put(self, key: str, value: bytes) -> int:
        self.data[key] = value
        return len(value)

    @da.p2p
    def digest(self, key: str) -> str:
        return hashlib.sha256(self.data.get(key, b"")).hexdigest()


LAYOUT = da.Layout({Docs: da.ShardPolicy(min_nodes=2, max_nodes=3)})


def test_a_record_larger_than_a_frame_reaches_a_joiner_and_the_group_stays(tmp_path: Path) -> None:
    big = bytes(range(256)) * ((3 * FRAME) // 256 + 7)  # over the frame limit, not a multiple of a chunk
    with running_groups(2, [Docs], LAYOUT, "big-record", 2000, tmp_path, extra=SMALL_FRAMES) as groups:
        docs = groups[0].handle(Docs)
        docs.put("small", b"s").persisted(timeout=30)
        assert docs.put("big", big).persisted(timeout=60) > 0
        docs.put("after", b"a").persisted(timeout=30)
        port = groups[0].config.listen_host_port()[1]
        joiner = da.Group(
            types=[Docs],
            layout=LAYOUT,
            start_timeout=30,
            overrides={
                **SMALL_FRAMES,
                "node.id": "3",
                "node.listen": f"127.0.0.1:{_free_ports(1)[0]}",
                "node.data_dir": str(tmp_path / "node-3"),
                "node.cluster": "big-record",
                "node.contacts": f"127.0.0.1:{port}",
                "timeouts.heartbeat_ms": "20",
                "timeouts.suspicion_ms": "2000",
                **tls_overrides(tmp_path, [3], "big-record"),
            },
        )
        try:
            everyone = [*groups, joiner]
            for _ in range(400):
                if all(len(g.members) == 3 for g in everyone):
                    break
                threading.Event().wait(0.05)
            want = hashlib.sha256(big).hexdigest()
            assert docs.digest("big", node=3).wait_all(timeout=30) == {3: want}
            assert docs.put("later", b"l").wait_all(timeout=30).keys() == {1, 2, 3}
            assert all(g.members == [1, 2, 3] for g in everyone), [g.members for g in everyone]
        finally:
            joiner.close()


def part(seq: int, records: list[list[object]], final: bool = False) -> StatePart:
    data = msgpack.packb(records, use_bin_type=True)
    return StatePart(seq, ChunkKind.LOG, data, final, False, 1, 2)


class _Log:
    def __init__(self) -> None:
        self.records: list[tuple[int, int, bytes]] = []

    def append(self, records: list[tuple[int, int, bytes]]) -> None:
        self.records.extend(records)


class _Store:
    """Just what ``IncomingState.take`` uses of a replica's store."""

    last_version = -1

    def __init__(self) -> None:
        self.log = _Log()

    def log_held(self) -> _Held:
        return _Held(self.log)


class _Held:
    def __init__(self, log: _Log) -> None:
        self.log = log

    def __enter__(self) -> _Log:
        return self.log

    def __exit__(self, *exc: object) -> None:
        return None


def test_pieces_of_a_record_are_joined_in_order(tmp_path: Path) -> None:
    body = bytes(range(200)) * 50
    chunks = [msgpack.unpackb(d, raw=False) for d in record_pieces(7, 99, body, 1000)]
    assert len(chunks) > 10 and all(len(c) == 1 and len(c[0]) == 5 for c in chunks)
    store = _Store()
    incoming = IncomingState(tmp_path, "Docs", "msgpack")
    seq = 0
    incoming.take(part(seq, [[6, 98, b"before"]]), store)  # type: ignore[arg-type]
    for seq, records in enumerate(chunks, start=1):
        incoming.take(part(seq, records), store)  # type: ignore[arg-type]
    assert incoming.take(part(seq + 1, [[8, 100, b"after"]], final=True), store)  # type: ignore[arg-type]
    assert store.log.records == [(6, 98, b"before"), (7, 99, body), (8, 100, b"after")]


@pytest.mark.parametrize(
    ("records", "error"),
    [
        ([[7, 1, b"ab", 0, 4], [8, 1, b"x"]], "in the middle of another"),  # a whole record cuts in
        ([[7, 1, b"ab", 0, 4], [7, 1, b"cd", 3, 4]], "at 3 of 4 after 2"),  # a gap
        ([[7, 1, b"abcde", 0, 4]], "at 0 of 4"),  # longer than it said
        ([[7, 1]], "2 fields"),
    ],
)
def test_bad_pieces_are_refused(tmp_path: Path, records: list[list[object]], error: str) -> None:
    incoming = IncomingState(tmp_path, "Docs", "msgpack")
    with pytest.raises(StateTransferError, match=error):
        incoming.take(part(0, records), _Store())  # type: ignore[arg-type]


def test_a_state_that_ends_mid_record_is_refused(tmp_path: Path) -> None:
    incoming = IncomingState(tmp_path, "Docs", "msgpack")
    with pytest.raises(StateTransferError, match="middle of a log record"):
        incoming.take(part(0, [[7, 1, b"ab", 0, 4]], final=True), _Store())  # type: ignore[arg-type]

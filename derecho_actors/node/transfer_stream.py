"""One state transfer stream: a replica's state at a view boundary, sent to one receiver in
chunks (the object state from its snapshot file, then the log records the receiver lacks, read
a chunk at a time), with at most ``window`` chunks unacknowledged, so memory stays bounded by
the window however large the state (see ``transfer``). Runs on the node's loop.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import msgpack

from derecho_actors.wire.messages import ChunkKind, StateChunk, StateRequest
from runtime.core.layout import ShardId


@dataclass
class BoundaryState:
    """A replica's state at one view boundary, ready to be sent."""

    shard: ShardId
    vid: int
    path: Path
    boundary: int  # last version in the log at the boundary (-1: none or atomic type)
    store: Any  # the replica's PersistentStore (for reading its log), or None
    active: int = 0  # transfers running from it
    requests_seen: set[int] = field(default_factory=set)
    receivers: set[int] = field(default_factory=set)  # members new to the shard in that view


RECORD_OVERHEAD = 32
"""Room in a chunk for a record's version, timestamp and msgpack framing."""
PIECE_OVERHEAD = 64
"""The same for a piece of a record (its offset and total too: five integers at most 9 bytes)."""


def log_records(store: Any, after: int, upto: int, max_bytes: int) -> tuple[list[list[Any]], int]:
    """Records after version ``after`` up to ``upto``, about ``max_bytes`` of them; returns
    them and the last version taken (``after`` if none). A record larger than ``max_bytes``
    comes alone (the caller cuts it into pieces)."""
    out: list[list[Any]] = []
    size = 0
    last = after
    with store.log_held() as log_:
        for version, ts, body in log_.iter_from(after):
            if version > upto:
                break
            if out and size + len(body) + RECORD_OVERHEAD > max_bytes:
                break  # would overflow the chunk: it starts the next one
            out.append([version, ts, body])
            last = version
            size += len(body) + RECORD_OVERHEAD
            if size >= max_bytes:
                break
    return out, last


def record_pieces(version: int, ts: int, body: bytes, max_bytes: int) -> Iterator[bytes]:
    """One record too large for a chunk, as the data of several LOG chunks: each a list of
    one ``[version, ts, piece, offset, total]`` (the receiver joins the pieces, see
    ``replica.state.IncomingState``), so no chunk's frame exceeds the chunk size however
    large a record the group accepted (one larger than the frame limit took the sender's
    connections, and the group, down)."""
    step = max(1, max_bytes - PIECE_OVERHEAD)
    view = memoryview(body)
    for offset in range(0, len(body), step):
        piece = bytes(view[offset : offset + step])
        yield msgpack.packb([[version, ts, piece, offset, len(body)]], use_bin_type=True)


def agreed_start(store: Any, request: StateRequest, boundary: int) -> tuple[int, bool]:
    """Where the log part starts for this receiver, and whether it must drop its own log
    (its last record is not the one we hold at that version)."""
    have = request.have_version
    if have < 0 or store is None:
        return -1, False
    if have > boundary:
        return -1, True
    with store.log_held() as log_:
        try:
            body = log_.read(have)
        except KeyError:
            return -1, True
    if zlib.crc32(body) != request.digest:
        return -1, True
    return have, False


class TransferOut:
    """One stream of one snapshot to one receiver."""

    def __init__(
        self,
        snap: BoundaryState,
        receiver: int,
        request: StateRequest,
        send: Callable[[int, StateChunk], None],
        chunk_bytes: int,
        window: int,
    ) -> None:
        self.snap = snap
        self.receiver = receiver
        self.send = send
        self.chunk_bytes = chunk_bytes
        self.window = window
        self.start, self.reset = agreed_start(snap.store, request, snap.boundary)
        self.seq = 0
        self.acked = -1
        self.done = False
        self.finished_sending = False
        self.sent_bytes = 0
        self.started_at = time.monotonic()
        self._items = self._produce()
        self._look: tuple[ChunkKind, bytes] | None = None
        self._primed = False

    def _produce(self) -> Iterator[tuple[ChunkKind, bytes]]:
        f: BinaryIO
        with open(self.snap.path, "rb") as f:
            while True:
                data = f.read(self.chunk_bytes)
                if not data:
                    break
                yield ChunkKind.OBJECT, data
        if self.snap.store is None:
            return
        after = self.start
        while after < self.snap.boundary:
            records, last = log_records(self.snap.store, after, self.snap.boundary, self.chunk_bytes)
            if not records:
                raise OSError(f"log ends at {after} before the snapshot's version {self.snap.boundary}")
            if len(records) == 1 and len(records[0][2]) + RECORD_OVERHEAD > self.chunk_bytes:
                version, ts, body = records[0]
                for data in record_pieces(version, ts, body, self.chunk_bytes):
                    yield ChunkKind.LOG, data
            else:
                yield ChunkKind.LOG, msgpack.packb(records, use_bin_type=True)
            after = last

    def pump(self) -> None:
        """Send chunks until the window is full or the stream has ended."""
        if not self._primed:
            self._look = next(self._items, None)
            self._primed = True
        while not self.finished_sending and self.seq - self.acked - 1 < self.window:
            part, data = self._look if self._look is not None else (ChunkKind.OBJECT, b"")
            self._look = next(self._items, None)
            final = self._look is None
            chunk = StateChunk(
                self.snap.shard, self.snap.vid, self.seq, part, data, final, self.reset and self.seq == 0
            )
            self.send(self.receiver, chunk)
            self.sent_bytes += len(data)
            self.seq += 1
            self.finished_sending = final

    def ack(self, seq: int) -> bool:
        """The receiver wrote chunk ``seq``; returns True once the whole stream is acked."""
        self.acked = max(self.acked, seq)
        if self.finished_sending and self.acked == self.seq - 1:
            self.done = True
            return True
        self.pump()
        return False

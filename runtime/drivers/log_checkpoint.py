"""Checkpoints of a versioned log: the log's index and its owner's replayed state at one version.

Opening a long log reads and checks every record (a Python step per record), and rebuilding a
replica from it decodes and applies every record again: for 100,000 versions that is most of
what a total restart waits for. A checkpoint, written now and then next to the log as
``<log>.ckpt``, lets both start from a version ``V`` of the log instead of from its first
record: it holds the index of the records up to ``V`` (version, timestamp and offset of each,
and the chain digests of a signed log) and an opaque *payload*, the state the log's owner
rebuilt from exactly those records (``derecho_actors.replica.checkpoint`` encodes it).

A checkpoint is a cache, never a source of truth: it is used only if the log still holds,
byte for byte, the records it was made from. It carries the crc32 of the log's bytes from its
first record to the end of record ``V`` (the *prefix crc*); opening the log recomputes that crc
(one pass of ``zlib.crc32`` over the file, no Python step per record) and ignores the
checkpoint when they differ: a damaged disk (then the full check of every record finds and
cuts the damage, as without a checkpoint), a log cut back below ``V`` (a state transfer that
replaced it, any trim), or records rewritten. :meth:`VersionedLog.truncate_after` deletes a
checkpoint above the cut. A checkpoint is not fsync'd: a torn or lost one fails its own crc
or is missing, and the log is then checked and replayed whole, as before checkpoints.

Signed logs opened with ``check_signatures=True`` check every record's signature anyway (a
checkpoint's crcs are no proof against a deliberate edit), so their index comes from the full
scan; the payload is still used when the prefix crc matches.

File layout (format 1; integers little-endian)::

    offset size  field
    0      8     magic        b"DRCHCKP\\n"
    8      2     format       1
    10     2     flags        bit 0: the log is signed (chain digests follow the offsets)
    12     4     reserved     0
    16     8     version      V, the last version the checkpoint covers
    24     8     count        records up to and including V
    32     8     end          offset in the log just past record V
    40     4     prefix_crc   crc32 of the log's bytes from its first record to ``end``
    44     4     payload_len
    48           versions, timestamps, offsets: ``count`` u64 each; chains: 32 bytes each (signed)
                 payload (``payload_len`` bytes)
    last   4     crc32 of every byte before it
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
import sys
import zlib
from array import array
from pathlib import Path

MAGIC = b"DRCHCKP\n"
FORMAT = 1
FLAG_SIGNED = 0x0001
HEADER = struct.Struct("<8sHHIQQQII")
CRC = struct.Struct("<I")
CHAIN_SIZE = 32


@dataclasses.dataclass(frozen=True)
class LogCheckpoint:
    """What the log's owner rebuilds from: the state after ``version`` (the log's
    ``count``-th record, stamped ``timestamp_ns``), as the owner encoded it."""

    version: int
    timestamp_ns: int
    count: int
    payload: bytes


@dataclasses.dataclass
class CheckpointFile:
    """A checkpoint file read back whole, its own crc checked (not yet against the log)."""

    version: int
    count: int
    end: int
    prefix_crc: int
    signed: bool
    versions: array
    timestamps: array
    offsets: array
    chains: bytearray | None
    payload: bytes

    def checkpoint(self) -> LogCheckpoint:
        # (The index arrays may have grown since: a scan resumed from them extends them.)
        return LogCheckpoint(self.version, self.timestamps[self.count - 1], self.count, self.payload)


def checkpoint_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".ckpt")


def _le(values: array) -> bytes:
    if sys.byteorder != "little":  # pragma: no cover - the format is little-endian
        values = array("Q", values)
        values.byteswap()
    return values.tobytes()


def _from_le(data: bytes | memoryview) -> array:
    values = array("Q")
    values.frombytes(data)
    if sys.byteorder != "little":  # pragma: no cover
        values.byteswap()
    return values


def encode(
    version: int,
    end: int,
    prefix_crc: int,
    versions: array,
    timestamps: array,
    offsets: array,
    chains: bytes | bytearray | None,
    payload: bytes,
) -> bytes:
    """The file's bytes for a checkpoint of the first ``len(versions)`` records."""
    return b"".join(parts(version, end, prefix_crc, versions, timestamps, offsets, chains, payload))


Part = bytes | bytearray | memoryview


def parts(
    version: int,
    end: int,
    prefix_crc: int,
    versions: array | memoryview,
    timestamps: array | memoryview,
    offsets: array | memoryview,
    chains: Part | None,
    payload: bytes,
) -> list[Part]:
    """The file's bytes for a checkpoint of the first ``len(versions)`` records, in pieces
    that are the index's own memory where they can be (on a little-endian machine no copy of
    it is made: a checkpoint of a long log is megabytes), its crc the last piece."""
    count = len(versions)
    flags = FLAG_SIGNED if chains is not None else 0
    out: list[Part] = [
        HEADER.pack(MAGIC, FORMAT, flags, 0, version, count, end, prefix_crc, len(payload)),
        *(_le_view(a) for a in (versions, timestamps, offsets)),
        chains if chains is not None else b"",
        payload,
    ]
    crc = 0
    for part in out:
        crc = zlib.crc32(part, crc)
    out.append(CRC.pack(crc))
    return out


def _le_view(values: array | memoryview) -> Part:
    if sys.byteorder != "little":  # pragma: no cover - the format is little-endian
        return _le(array("Q", values))
    return values if isinstance(values, memoryview) else memoryview(values)


def decode(data: bytes) -> CheckpointFile | str:
    """The checkpoint in ``data``, or why it is unusable (its own checks only)."""
    if len(data) < HEADER.size + CRC.size:
        return "cut short"
    if zlib.crc32(memoryview(data)[:-4]) != CRC.unpack_from(data, len(data) - 4)[0]:
        return "bad crc"
    magic, fmt, flags, _reserved, version, count, end, prefix_crc, payload_len = HEADER.unpack_from(data)
    if magic != MAGIC or fmt != FORMAT or flags & ~FLAG_SIGNED:
        return f"not a checkpoint of format {FORMAT}"
    signed = bool(flags & FLAG_SIGNED)
    per_record = 24 + (CHAIN_SIZE if signed else 0)
    if count < 1 or HEADER.size + count * per_record + payload_len + CRC.size != len(data):
        return "bad length"
    view = memoryview(data)
    at = HEADER.size
    versions = _from_le(view[at : at + 8 * count])
    timestamps = _from_le(view[at + 8 * count : at + 16 * count])
    offsets = _from_le(view[at + 16 * count : at + 24 * count])
    at += 24 * count
    chains = None
    if signed:
        chains = bytearray(view[at : at + CHAIN_SIZE * count])
        at += CHAIN_SIZE * count
    payload = bytes(view[at : at + payload_len])
    if versions[-1] != version or offsets[-1] >= end:
        return "inconsistent index"
    return CheckpointFile(version, count, end, prefix_crc, signed, versions, timestamps, offsets, chains, payload)


def read(path: Path) -> CheckpointFile | str | None:
    """The checkpoint at ``path`` (None: there is none; a str: why it is unusable)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return decode(data)


def write(path: Path, data: bytes | list[Part]) -> None:
    """Replace the checkpoint at ``path`` with ``data`` (its bytes, or :func:`parts`): a
    temporary file renamed over it; not fsync'd: a checkpoint lost or torn by a crash fails
    its checks and is simply not used."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        if isinstance(data, list):
            f.writelines(data)
        else:
            f.write(data)
    os.replace(tmp, path)


def remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def crc_range(fd: int, start: int, end: int, crc: int = 0) -> int | None:
    """crc32 of the file's bytes ``[start, end)``, continuing ``crc``; None if the file ends
    before ``end``. Through a read-only mapping: one pass of ``zlib.crc32`` over the page
    cache, no copy of the (possibly large) range."""
    if end <= start:
        return crc
    if os.fstat(fd).st_size < end:
        return None
    with mmap.mmap(fd, end, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
        with view[start:end] as part:
            return zlib.crc32(part, crc)

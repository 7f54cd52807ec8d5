"""Log checkpoints (``runtime.drivers.log_checkpoint``): a checkpoint lets opening a log skip
checking the records it covers, and hands its payload to the log's owner, only while the log
holds exactly the records it was made from. Any change to those records (damage, a cut below
its version, a replaced log), a damaged or torn checkpoint file, or a checkpoint of a log
signed differently, and the log is opened as without one: every record checked, recovery as
before, no payload."""

from __future__ import annotations

import os
import pathlib
import struct
import zlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.drivers import log_checkpoint
from runtime.drivers.log_store import VersionedLog, verify

pytestmark = pytest.mark.timeout(60)

HEADER = 16
REC_HEAD = 24
BODY = 40


def body_of(version: int) -> bytes:
    return (f"v{version}:".encode() * BODY)[:BODY]


def fill(path: pathlib.Path, versions: range, key: Ed25519PrivateKey | None = None) -> None:
    with VersionedLog.open(path, signing_key=key, fsync=False) as log:
        log.append((v, 1000 * v, body_of(v)) for v in versions)
        log.flush()


def index(log: VersionedLog) -> tuple[list[int], list[int], list[int], bytes | None]:
    chains = bytes(log._chains) if log._chains is not None else None
    return list(log._versions), list(log._timestamps), list(log._offsets), chains


def checkpointed(path: pathlib.Path, n: int, at: int, key: Ed25519PrivateKey | None = None) -> None:
    """A log of versions 0..n-1 with a checkpoint at version ``at`` (payload b"state@at")."""
    fill(path, range(n), key)
    with VersionedLog.open(path, signing_key=key, fsync=False) as log:
        log.write_checkpoint(at, b"state@%d" % at)


def full_index(path: pathlib.Path, key: Ed25519PrivateKey | None = None) -> tuple[object, ...]:
    """The index a scan of every record gives (the checkpoint moved aside meanwhile)."""
    ckpt = log_checkpoint.checkpoint_path(path)
    aside = ckpt.with_name("aside")
    ckpt.rename(aside)
    try:
        with VersionedLog.open(path, signing_key=key, fsync=False) as log:
            return (*index(log), log._written)
    finally:
        aside.rename(ckpt)


@pytest.mark.parametrize("at", [0, 17, 49])
def test_a_checkpoint_gives_the_index_a_full_scan_gives_and_its_payload(tmp_path: pathlib.Path, at: int) -> None:
    path = tmp_path / "a.log"
    checkpointed(path, 50, at)
    want = full_index(path)
    with VersionedLog.open(path, fsync=False) as log:
        assert (*index(log), log._written) == want
        found = log.take_checkpoint()
        assert found is not None and (found.version, found.timestamp_ns, found.count) == (at, 1000 * at, at + 1)
        assert found.payload == b"state@%d" % at
        assert log.take_checkpoint() is None  # handed over once
        log.append([(50, 50_000, body_of(50))])  # the log goes on as usual
        log.flush()
    assert verify(path).ok and verify(path).records == 51


def test_records_after_the_checkpoint_are_still_checked(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.log"
    checkpointed(path, 20, 9)
    with open(path, "r+b") as f:  # damage record 15, after the checkpoint
        f.seek(HEADER + 15 * (REC_HEAD + BODY) + REC_HEAD + 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with VersionedLog.open(path, fsync=False) as log:
        assert log.recovery is not None and log.recovery.records_kept == 15
        assert log.last_version == 14
        found = log.take_checkpoint()
        assert found is not None and found.version == 9  # its records are intact


def test_damage_before_the_checkpoint_discards_it_and_recovers_as_before(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.log"
    checkpointed(path, 20, 15)
    with open(path, "r+b") as f:  # damage record 4, inside the checkpoint's records
        f.seek(HEADER + 4 * (REC_HEAD + BODY) + REC_HEAD + 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with VersionedLog.open(path, fsync=False) as log:
        assert log.recovery is not None and log.recovery.records_kept == 4  # cut at the damage
        assert log.take_checkpoint() is None
    assert not log_checkpoint.checkpoint_path(path).exists()


def test_a_log_cut_below_the_checkpoint_never_uses_it(tmp_path: pathlib.Path) -> None:
    """The ragged-trim case: whatever cuts the log back below a checkpoint's version (here
    truncate_after, as a state transfer replacing the log or a trim does), the checkpoint
    is gone, in memory and on disk, and a later open finds none."""
    path = tmp_path / "a.log"
    checkpointed(path, 30, 20)
    with VersionedLog.open(path, fsync=False) as log:
        log.truncate_after(25)  # above it: kept
        assert log.checkpoint is not None and log_checkpoint.checkpoint_path(path).exists()
        log.truncate_after(12)  # below it: dropped
        assert log.take_checkpoint() is None
        assert not log_checkpoint.checkpoint_path(path).exists()
        # The same versions logged again with other contents: a new history.
        log.append((v, 1000 * v, b"other" + body_of(v)) for v in range(13, 30))
        log.flush()
    with VersionedLog.open(path, fsync=False) as log:
        assert log.take_checkpoint() is None
        assert log.read(20).startswith(b"other")


def test_a_file_cut_or_rewritten_under_a_closed_log_discards_the_checkpoint(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.log"
    checkpointed(path, 30, 20)
    ckpt = log_checkpoint.checkpoint_path(path).read_bytes()
    os.truncate(path, HEADER + 10 * (REC_HEAD + BODY))  # cut by hand, below the checkpoint
    with VersionedLog.open(path, fsync=False) as log:
        assert log.take_checkpoint() is None and log.last_version == 9
        log.append((v, 1000 * v, b"new" + body_of(v)[3:]) for v in range(10, 30))  # same sizes
        log.flush()
    log_checkpoint.checkpoint_path(path).write_bytes(ckpt)  # the old checkpoint put back
    with VersionedLog.open(path, fsync=False) as log:
        assert log.take_checkpoint() is None  # the bytes differ: not used
        assert log.read(15).startswith(b"new")


@pytest.mark.parametrize("damage", ["torn", "flipped", "empty", "garbage"])
def test_a_damaged_checkpoint_file_is_ignored(tmp_path: pathlib.Path, damage: str) -> None:
    path = tmp_path / "a.log"
    checkpointed(path, 30, 20)
    ckpt = log_checkpoint.checkpoint_path(path)
    data = ckpt.read_bytes()
    if damage == "torn":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    elif damage == "empty":
        data = b""
    else:
        data = os.urandom(len(data))
    ckpt.write_bytes(data)
    with VersionedLog.open(path, fsync=False) as log:
        assert log.take_checkpoint() is None
        assert log.last_version == 29 and log.recovery is None


def test_signed_logs_check_every_signature_yet_keep_the_payload(tmp_path: pathlib.Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "s.log"
    checkpointed(path, 12, 7, key)
    want = full_index(path, key)
    with VersionedLog.open(path, signing_key=key, fsync=False) as log:  # signatures checked
        assert (*index(log), log._written) == want
        found = log.take_checkpoint()
        assert found is not None and found.version == 7
    with VersionedLog.open(path, signing_key=key, fsync=False, check_signatures=False) as log:
        assert (*index(log), log._written) == want  # the chains come from the checkpoint
        assert log.take_checkpoint() is not None
        log.append([(12, 12_000, body_of(12))])  # chains carry on from the checkpoint's
        log.flush()
    assert verify(path).ok
    # A checkpoint of an unsigned log next to a signed log of the same name: not used.
    fill(tmp_path / "u.log", range(12))
    with VersionedLog.open(tmp_path / "u.log", fsync=False) as log:
        log.write_checkpoint(7, b"x")
    log_checkpoint.checkpoint_path(tmp_path / "u.log").rename(log_checkpoint.checkpoint_path(path))
    with VersionedLog.open(path, signing_key=key, fsync=False, check_signatures=False) as log:
        assert log.take_checkpoint() is None and log.last_version == 12


def test_checkpoints_replace_each_other_and_need_written_records(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.log"
    fill(path, range(10))
    with VersionedLog.open(path, fsync=False) as log:
        log.write_checkpoint(3, b"three")
        log.write_checkpoint(8, b"eight")
        log.write_checkpoint(5, b"five")  # an older version: the crc is recomputed from the start
        with pytest.raises(KeyError):
            log.write_checkpoint(42, b"absent")
        log.append([(10, 10_000, body_of(10))])  # buffered, not written
        with pytest.raises(Exception, match="records written first"):
            log.write_checkpoint(10, b"ten")
        log.flush()
        log.write_checkpoint(10, b"ten")
    with VersionedLog.open(path, fsync=False) as log:
        found = log.take_checkpoint()
        assert found is not None and (found.version, found.payload) == (10, b"ten")


@pytest.mark.parametrize("signed", [False, True])
def test_a_checkpoint_written_from_views_of_the_index_is_the_encoded_bytes_and_the_log_grows_after(
    tmp_path: pathlib.Path, signed: bool
) -> None:
    """The writer hands the file the index's own memory (no copies): the file holds exactly
    what ``encode`` gives, and the index's arrays, viewed meanwhile, still take records."""
    key = Ed25519PrivateKey.generate() if signed else None
    path = tmp_path / "a.log"
    fill(path, range(30), key)
    with VersionedLog.open(path, signing_key=key, fsync=False) as log:
        log.write_checkpoint(19, b"state@19")
        chains = bytes(log._chains[: 20 * 32]) if log._chains is not None else None
        # The format spelled out here, not through the writer's own code: header, the three
        # index columns as little-endian u64, the chains if signed, the payload, a crc32.
        header = struct.pack(
            "<8sHHIQQQII", b"DRCHCKP\n", 1, 1 if signed else 0, 0, 19, 20, log._offsets[20], log._crc, 8
        )
        columns = b"".join(struct.pack("<20Q", *a[:20]) for a in (log._versions, log._timestamps, log._offsets))
        body = header + columns + (chains or b"") + b"state@19"
        expected = body + struct.pack("<I", zlib.crc32(body))
        assert log_checkpoint.checkpoint_path(path).read_bytes() == expected
        log.append([(30, 30_000, body_of(30))])  # the arrays are no longer viewed
        log.flush()
        log.write_checkpoint(30, b"state@30")
    with VersionedLog.open(path, signing_key=key, fsync=False) as log:
        found = log.take_checkpoint()
        assert found is not None and (found.version, found.count, found.payload) == (30, 31, b"state@30")
        assert log.last_version == 30

"""Tests of the on-disk versioned log: round trips, recovery, signatures, reads, and the CLI.

Offsets into the file are computed here from the format the module docstring documents
(a 16-byte header, 32 more bytes of public key when signed; records of a 24-byte header,
the body, and 64 signature bytes when signed), so the tests also pin that format down, as
they do the chain digest (SHA-256 over the previous digest, version, timestamp and body) and
the domain prefix of what a signature signs.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import pathlib
import stat
import subprocess
import sys
import zlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from runtime.drivers import log_store
from runtime.drivers.log_store import (
    VersionedLog,
    generate_key,
    load_public_key,
    load_signing_key,
    public_key_bytes,
    verify,
    verify_dir,
)
from runtime.errors import DerechoError, LogCorrupted, LogError, LogSignatureError

pytestmark = pytest.mark.timeout(60)

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADER = 16
KEY = 32
REC_HEAD = 24
SIG = 64
BODY = 40  # body size of the records made by fill()
DOMAIN = b"derecho-log-v2"


def body_of(version: int, size: int = BODY) -> bytes:
    return (f"v{version}:".encode() * size)[:size]


def fill(path: pathlib.Path, n: int, key: Ed25519PrivateKey | None = None, **kw: object) -> None:
    """A log of versions 0..n-1, timestamp 1000 * version, bodies of BODY bytes."""
    with VersionedLog.open(path, signing_key=key, **kw) as log:  # type: ignore[arg-type]
        log.append((v, 1000 * v, body_of(v)) for v in range(n))
        log.flush()


def record_offset(k: int, signed: bool = False, size: int = BODY) -> int:
    start = HEADER + (KEY if signed else 0)
    return start + k * (REC_HEAD + size + (SIG if signed else 0))


def flip(path: pathlib.Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def chain_of(records: list[tuple[int, int, bytes]]) -> list[bytes]:
    """The chain digests of ``records``, computed from the documented definition."""
    chains, prev = [], bytes(32)
    for version, ts, body in records:
        prev = hashlib.sha256(prev + version.to_bytes(8, "little") + ts.to_bytes(8, "little") + body).digest()
        chains.append(prev)
    return chains


def set_format(path: pathlib.Path, fmt: int) -> None:
    """Rewrite the header's format field and fix the header crc (over the key too if signed)."""
    data = bytearray(path.read_bytes())
    data[8:10] = fmt.to_bytes(2, "little")
    signed = int.from_bytes(data[10:12], "little") & 1
    key = bytes(data[HEADER : HEADER + KEY]) if signed else b""
    data[12:16] = zlib.crc32(key, zlib.crc32(bytes(data[:12]))).to_bytes(4, "little")
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------
# Round trips and the basic contract


def test_round_trip_and_reopen(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sub" / "obj.log"  # the folder is created too
    with VersionedLog.open(path) as log:
        assert log.recovery is None
        assert (len(log), log.first_version, log.last_version, log.durable_version) == (0, -1, -1, -1)
        log.append([(3, 10, b"three"), (7, 20, b""), (9, 20, b"nine" * 1000)])
        assert log.last_version == 9 and log.durable_version == -1
        assert log.read(7) == b""  # readable before the flush, from the buffer
        assert path.stat().st_size == HEADER  # nothing written before flush
        assert log.flush() == 9
        assert log.durable_version == 9
        assert log.flush() == 9  # nothing new: no write, same answer
    with VersionedLog.open(path) as log:
        assert log.recovery is None
        assert (len(log), log.first_version, log.last_version, log.durable_version) == (3, 3, 9, 9)
        assert [log.read(v) for v in (3, 7, 9)] == [b"three", b"", b"nine" * 1000]
        assert list(log.iter_from()) == [(3, 10, b"three"), (7, 20, b""), (9, 20, b"nine" * 1000)]
        log.append([(10, 30, b"ten")])
    with VersionedLog.open(path) as log:  # close() flushed the last append
        assert log.last_version == 10 and log.read(10) == b"ten"


def test_file_layout_matches_the_documented_format(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.log"
    with VersionedLog.open(path) as log:
        log.append([(5, 77, b"hello")])
    data = path.read_bytes()
    assert data[:8] == b"DRCHLOG\n"
    assert int.from_bytes(data[8:10], "little") == 2 and int.from_bytes(data[10:12], "little") == 0
    assert int.from_bytes(data[12:16], "little") == zlib.crc32(data[:12])
    rec = data[HEADER:]
    assert int.from_bytes(rec[0:4], "little") == 5
    assert int.from_bytes(rec[4:12], "little") == 5
    assert int.from_bytes(rec[12:20], "little") == 77
    assert int.from_bytes(rec[20:24], "little") == zlib.crc32(rec[4:20] + b"hello")
    assert rec[24:] == b"hello"


def test_signed_layout_and_signature_chain(tmp_path: pathlib.Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "s.log"
    fill(path, 3, key)
    data = path.read_bytes()
    assert int.from_bytes(data[8:10], "little") == 2  # the format
    assert int.from_bytes(data[10:12], "little") == 1  # the signed flag
    assert data[HEADER : HEADER + KEY] == public_key_bytes(key)
    prev = bytes(32)
    for k in range(3):
        at = record_offset(k, signed=True)
        rec = data[at : record_offset(k + 1, signed=True)]
        sig = rec[REC_HEAD + BODY :]
        chain = hashlib.sha256(prev + rec[4:20] + rec[REC_HEAD : REC_HEAD + BODY]).digest()
        key.public_key().verify(sig, DOMAIN + chain)
        assert int.from_bytes(rec[20:24], "little") == zlib.crc32(rec[4:20] + rec[REC_HEAD:])
        prev = chain
    assert len(data) == record_offset(3, signed=True)  # the chain digests are not on disk


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ([(1, 0, b"a")], [(1, 0, b"b")]),  # repeated across calls
        ([(5, 0, b"a")], [(4, 0, b"b")]),  # lower across calls
        ([], [(1, 0, b"a"), (3, 0, b"b"), (2, 0, b"c")]),  # out of order within a batch
        ([], [(-1, 0, b"a")]),  # negative
        ([], [(2**64, 0, b"a")]),  # beyond u64
        ([(1, 50, b"a")], [(2, 49, b"b")]),  # timestamp going back
        ([], [(1, -5, b"a")]),
    ],
)
def test_versions_strictly_increase(tmp_path: pathlib.Path, first: list, second: list) -> None:
    with VersionedLog.open(tmp_path / "x.log") as log:
        log.append(first)
        before = (len(log), log.last_version)
        with pytest.raises(ValueError):
            log.append(second)
        assert (len(log), log.last_version) == before  # all or nothing
        log.append([(before[1] + 100, 10**6, b"ok")])  # still usable
        assert log.flush() == before[1] + 100


def test_body_must_be_bytes_and_closed_log_refuses(tmp_path: pathlib.Path) -> None:
    log = VersionedLog.open(tmp_path / "x.log")
    with pytest.raises(TypeError):
        log.append([(1, 0, "text")])  # type: ignore[list-item]
    log.append([(1, 0, bytearray(b"ba")), (2, 0, memoryview(b"mv"))])
    assert log.read(1) == b"ba" and log.read(2) == b"mv"
    log.close()
    log.close()  # twice is fine
    with pytest.raises(LogError, match="closed"):
        log.read(1)
    with pytest.raises(LogError, match="closed"):
        log.append([(3, 0, b"")])


def test_one_process_at_a_time(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    with VersionedLog.open(path):
        with pytest.raises(LogError, match="open in another process"):
            VersionedLog.open(path)
    VersionedLog.open(path).close()  # the lock went with the close


def test_failed_fsync_closes_the_log(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.log"
    log = VersionedLog.open(path)
    log.append([(1, 0, b"a")])
    assert log.flush() == 1
    log.append([(2, 0, b"b")])

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(log_store.os, "fsync", failing_fsync)
    with pytest.raises(LogError, match="fsync .* failed .* after version 1 may be lost"):
        log.flush()
    monkeypatch.undo()
    with pytest.raises(LogError, match="closed"):
        log.append([(3, 0, b"c")])  # a retried fsync could lie: only a reopen is trusted
    log.close()
    with VersionedLog.open(path) as again:
        assert again.last_version == 2  # here the page cache still held it


def test_bad_file_header_is_refused_untouched(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    fill(path, 3)
    flip(path, 9)  # the format version, caught by the header crc
    before = path.read_bytes()
    with pytest.raises(LogCorrupted, match="header"):
        VersionedLog.open(path)
    other = tmp_path / "notes.log"
    other.write_text("not a log at all")
    with pytest.raises(LogCorrupted, match="not a derecho-actors log"):
        VersionedLog.open(other)
    assert path.read_bytes() == before
    report = verify(path)
    assert report.bad is not None and report.bad.reason == "bad header"


def test_exception_hierarchy() -> None:
    assert issubclass(LogCorrupted, LogError) and issubclass(LogSignatureError, LogError)
    assert issubclass(LogError, DerechoError)


# ----------------------------------------------------------------------------------------
# Recovery


@pytest.mark.parametrize("cut", [1, 10, REC_HEAD + 5, REC_HEAD + BODY - 1])
def test_torn_tail_recovers_to_last_whole_record(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, cut: int
) -> None:
    path = tmp_path / "x.log"
    fill(path, 10)
    with open(path, "r+b") as f:
        f.truncate(record_offset(9) + cut)
    with caplog.at_level(logging.WARNING, logger="derecho.log"):
        log = VersionedLog.open(path)
    with log:
        rec = log.recovery
        assert rec is not None
        assert (rec.records_kept, rec.first_bad_index, rec.first_bad_offset) == (9, 9, record_offset(9))
        assert (rec.reason, rec.bytes_dropped, rec.damaged_copy) == ("torn", cut, None)
        assert rec.first_bad_version == (9 if cut >= REC_HEAD else None)
        assert log.last_version == 8 and log.durable_version == 8 and log.read(8) == body_of(8)
        assert path.stat().st_size == record_offset(9)
        log.append([(9, 9000, b"again")])
    assert not list(tmp_path.glob("*.damaged-*"))
    assert any("dropped" in r.getMessage() and "record 9" in r.getMessage() for r in caplog.records)
    with VersionedLog.open(path) as log:
        assert log.recovery is None and log.read(9) == b"again"


def test_zero_filled_tail_counts_as_torn(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    fill(path, 4)
    with open(path, "ab") as f:
        f.write(bytes(300))
    with VersionedLog.open(path) as log:
        assert log.recovery is not None and log.recovery.reason == "torn"
        assert log.recovery.damaged_copy is None and len(log) == 4


def test_flipped_body_byte_in_middle_record_is_caught_and_kept_aside(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "x.log"
    fill(path, 10)
    flip(path, record_offset(4) + REC_HEAD + 7)
    damaged = path.read_bytes()[record_offset(4) :]
    with caplog.at_level(logging.WARNING, logger="derecho.log"):
        log = VersionedLog.open(path)
    with log:
        rec = log.recovery
        assert rec is not None
        assert (rec.records_kept, rec.first_bad_index, rec.first_bad_offset, rec.reason) == (
            4,
            4,
            record_offset(4),
            "bad crc",
        )
        assert rec.bytes_dropped == len(damaged)
        assert rec.damaged_copy == pathlib.Path(f"{path}.damaged-1")
        assert rec.damaged_copy.read_bytes() == damaged
        assert list(log.iter_from()) == [(v, 1000 * v, body_of(v)) for v in range(4)]
    assert path.stat().st_size == record_offset(4)
    assert any("damaged-1" in r.getMessage() for r in caplog.records)
    # A second damage gets the next free name.
    fill(path, 0)
    with VersionedLog.open(path) as log:
        log.append([(4, 4000, body_of(4)), (5, 5000, body_of(5))])
    flip(path, record_offset(5) + REC_HEAD)
    with VersionedLog.open(path) as log:
        assert log.recovery is not None and log.recovery.damaged_copy == pathlib.Path(f"{path}.damaged-2")


def test_damaged_length_field_is_not_mistaken_for_a_torn_tail(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    fill(path, 10)
    flip(path, record_offset(4) + 3, 0x80)  # the length now runs far past the end
    with VersionedLog.open(path) as log:
        assert log.recovery is not None
        assert (log.recovery.reason, log.recovery.first_bad_index) == ("bad length", 4)
        assert log.recovery.damaged_copy is not None and len(log) == 4


def test_recovery_drops_a_record_whose_version_does_not_increase(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    fill(path, 3)
    data = path.read_bytes()
    rec1 = data[record_offset(1) : record_offset(2)]
    path.write_bytes(data + rec1)  # a valid record, replayed: crc good, version 1 again
    with VersionedLog.open(path) as log:
        assert log.recovery is not None
        assert (log.recovery.reason, log.recovery.first_bad_index, log.recovery.first_bad_version) == (
            "version not increasing",
            3,
            1,
        )
        assert log.last_version == 2


# ----------------------------------------------------------------------------------------
# Signed logs


def _signed(tmp_path: pathlib.Path, n: int = 8) -> tuple[pathlib.Path, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "s.log"
    fill(path, n, key)
    return path, key


# (where in record k, xor mask, expected reason when k is not the last record)
FLIPS = [
    ("length low byte", 0, 0x01, "bad crc"),
    ("length high byte", 3, 0x80, "bad length"),
    ("version", 4, 0x01, "bad crc"),
    ("version high byte", 11, 0x40, "bad crc"),
    ("timestamp", 12, 0x10, "bad crc"),
    ("crc", 21, 0x01, "bad crc"),
    ("body first byte", REC_HEAD, 0x01, "bad crc"),
    ("body last byte", REC_HEAD + BODY - 1, 0x20, "bad crc"),
    ("signature first byte", REC_HEAD + BODY, 0x01, "bad crc"),
    ("signature last byte", REC_HEAD + BODY + SIG - 1, 0x80, "bad crc"),
]


@pytest.mark.parametrize("k", [0, 1, 4, 7])
@pytest.mark.parametrize(("where", "at", "mask", "reason"), FLIPS, ids=[f[0] for f in FLIPS])
def test_verify_names_exactly_the_flipped_record(
    tmp_path: pathlib.Path, k: int, where: str, at: int, mask: int, reason: str
) -> None:
    path, key = _signed(tmp_path)
    assert verify(path, public_key_bytes(key)).ok
    flip(path, record_offset(k, signed=True) + at, mask)
    before = path.read_bytes()
    report = verify(path, public_key_bytes(key))
    assert path.read_bytes() == before  # verify never writes
    assert not report.ok and report.bad is not None
    assert (report.bad.index, report.bad.offset, report.records) == (k, record_offset(k, signed=True), k)
    # A longer length on the last record runs past the end of the file: as a torn write does.
    expected = "torn" if (k == 7 and at < 4) else reason
    assert report.bad.reason == expected
    if at >= 12:  # the version field is intact
        assert report.bad.version == k
    assert f"record {k} at offset {record_offset(k, signed=True)}" in report.describe()


def test_forged_record_fails_its_signature(tmp_path: pathlib.Path) -> None:
    path, key = _signed(tmp_path)
    data = bytearray(path.read_bytes())
    at = record_offset(3, signed=True)
    data[at + REC_HEAD] ^= 0x01  # change the body, then fix the crc as a forger would
    covered = bytes(data[at + 4 : at + 20]) + bytes(data[at + REC_HEAD : record_offset(4, signed=True)])
    crc = zlib.crc32(covered)
    data[at + 20 : at + 24] = crc.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    report = verify(path)
    assert report.bad is not None
    assert (report.bad.index, report.bad.reason, report.bad.version) == (3, "bad signature", 3)
    with VersionedLog.open(path, signing_key=key) as log:
        assert log.recovery is not None and log.recovery.reason == "bad signature" and len(log) == 3
        assert log.recovery.damaged_copy is not None


def test_dropping_a_record_breaks_the_chain(tmp_path: pathlib.Path) -> None:
    path, _key = _signed(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: record_offset(2, signed=True)] + data[record_offset(3, signed=True) :])
    report = verify(path)
    assert report.bad is not None  # record 3 now sits at index 2, chained to record 1
    assert (report.bad.index, report.bad.reason, report.bad.version) == (2, "bad signature", 3)


def test_wrong_or_missing_key_is_refused(tmp_path: pathlib.Path) -> None:
    path, key = _signed(tmp_path)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(LogSignatureError, match="signed log; open it with its signing key"):
        VersionedLog.open(path)
    with pytest.raises(LogSignatureError, match=public_key_bytes(key).hex()):
        VersionedLog.open(path, signing_key=other)
    report = verify(path, public_key_bytes(other))
    assert not report.ok and report.bad is not None and report.bad.reason == "wrong key"
    assert "wrong key" in report.describe()
    assert verify(path).ok and verify(path).signed  # checked against its own header key
    plain = tmp_path / "plain.log"
    fill(plain, 2)
    with pytest.raises(LogSignatureError, match="unsigned"):
        VersionedLog.open(plain, signing_key=key)
    assert verify(plain, public_key_bytes(key)).bad.reason == "not signed"  # type: ignore[union-attr]
    with VersionedLog.open(path, signing_key=key) as log:  # the right key still works
        assert log.recovery is None and len(log) == 8 and log.public_key == public_key_bytes(key)


def test_signed_log_keeps_its_chain_across_reopen_and_truncate(tmp_path: pathlib.Path) -> None:
    path, key = _signed(tmp_path)
    with VersionedLog.open(path, signing_key=key) as log:
        log.append([(8, 8000, b"eight")])
        log.flush()
        log.truncate_after(5)
        log.append([(6, 6500, b"six again")])
    assert verify(path, public_key_bytes(key)).ok
    with VersionedLog.open(path, signing_key=key, check_signatures=False) as log:
        log.truncate_after(-1)
        log.append([(0, 0, b"fresh")])
    report = verify(path)
    assert report.ok and report.records == 1


# ----------------------------------------------------------------------------------------
# Per-node keys: chain digests and checking a peer's log


RECORDS = [(v, 1000 * v, body_of(v)) for v in range(8)]


def _log_of(path: pathlib.Path, records: list[tuple[int, int, bytes]], key: Ed25519PrivateKey) -> VersionedLog:
    log = VersionedLog.open(path, signing_key=key)
    log.append(records)
    log.flush()
    return log


def _changed(k: int, what: str) -> list[tuple[int, int, bytes]]:
    """RECORDS with record k changed in one field (None: unchanged)."""
    out = list(RECORDS)
    if what == "body":
        out[k] = (k, 1000 * k, body_of(k)[:-1] + b"!")
    elif what == "timestamp":
        out[k] = (k, 1000 * k + 1, body_of(k))
    elif what == "empty body":
        out[k] = (k, 1000 * k, b"")
    return out


# (what differs, at which record: None for identical logs)
PEERS = [
    ("nothing", None),
    ("body", 0),
    ("body", 3),
    ("body", 7),
    ("timestamp", 5),
    ("empty body", 2),
]


@pytest.mark.parametrize(("what", "k"), PEERS, ids=[f"{w}@{k}" for w, k in PEERS])
def test_verify_peer_with_different_keys(tmp_path: pathlib.Path, what: str, k: int | None) -> None:
    key_a, key_b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    a = _log_of(tmp_path / "a.log", RECORDS, key_a)
    b = _log_of(tmp_path / "b.log", RECORDS if k is None else _changed(k, what), key_b)
    with a, b:
        for v in range(len(RECORDS)):
            same = k is None or v < k
            assert (a.chain_digest(v) == b.chain_digest(v)) is same
            if same:
                assert a.signature(v) != b.signature(v)  # other keys, other signatures
            assert a.verify_peer(v, b.signature(v), public_key_bytes(key_b)) is same, v
            assert b.verify_peer(v, a.signature(v), public_key_bytes(key_a)) is same, v
            assert a.verify_peer(v, a.signature(v), public_key_bytes(key_a))  # ourselves, always


def test_chain_digest_matches_the_documented_definition(tmp_path: pathlib.Path) -> None:
    with _log_of(tmp_path / "a.log", RECORDS, Ed25519PrivateKey.generate()) as log:
        assert [log.chain_digest(v) for v in range(8)] == chain_of(RECORDS)
        with pytest.raises(KeyError):
            log.chain_digest(8)
    with VersionedLog.open(tmp_path / "plain.log") as plain:
        plain.append(RECORDS)
        with pytest.raises(LogError, match="not signed"):
            plain.chain_digest(0)
        with pytest.raises(LogError, match="not signed"):
            plain.verify_peer(0, bytes(SIG), bytes(KEY))


def _peer_inputs() -> list[tuple[str, object, object, object]]:
    """(name, version, signature, key) with placeholders filled in by the test: "sig" is
    the peer's good signature at 3, "sig2" its signature at 2, "key" its public key."""
    return [
        ("good", 3, "sig", "key"),
        ("good from a third node too", 3, "third", "third-key"),  # same log, its own key: valid
        ("third key's signature offered as the peer's", 3, "third", "key"),
        ("peer's signature offered with a third key", 3, "sig", "third-key"),
        ("signature of another version", 3, "sig2", "key"),
        ("version we lack", 8, "sig", "key"),
        ("negative version", -1, "sig", "key"),
        ("version not an int", "3", "sig", "key"),
        ("version a bool", True, "sig", "key"),
        ("signature one byte short", 3, "sig[:-1]", "key"),
        ("signature one byte long", 3, "sig+", "key"),
        ("empty signature", 3, b"", "key"),
        ("signature not bytes", 3, None, "key"),
        ("zero signature", 3, bytes(SIG), "key"),
        ("key one byte short", 3, "sig", "key[:-1]"),
        ("key one byte long", 3, "sig", "key+"),
        ("empty key", 3, "sig", b""),
        ("key not bytes", 3, "sig", 12345),
        ("zero key", 3, "sig", bytes(KEY)),
    ]


PEER_INPUTS = _peer_inputs()


@pytest.mark.parametrize(("name", "version", "sig", "key"), PEER_INPUTS, ids=[p[0] for p in PEER_INPUTS])
def test_verify_peer_rejects_bad_input_without_raising(
    tmp_path: pathlib.Path, name: str, version: object, sig: object, key: object
) -> None:
    peer_key, third = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    mine = _log_of(tmp_path / "a.log", RECORDS, Ed25519PrivateKey.generate())
    peer = _log_of(tmp_path / "b.log", RECORDS, peer_key)
    other = _log_of(tmp_path / "c.log", RECORDS, third)
    with mine, peer, other:
        good = peer.signature(3)
        sigs = {
            "sig": good,
            "sig2": peer.signature(2),
            "third": other.signature(3),
            "sig[:-1]": good[:-1],
            "sig+": good + b"\0",
        }
        pk = public_key_bytes(peer_key)
        keys = {"key": pk, "third-key": public_key_bytes(third), "key[:-1]": pk[:-1], "key+": pk + b"\0"}
        signature = sigs.get(sig, sig) if isinstance(sig, str) else sig
        public = keys.get(key, key) if isinstance(key, str) else key
        expected = name.startswith("good")
        assert mine.verify_peer(version, signature, public) is expected  # type: ignore[arg-type]


def test_chain_digests_survive_reopen_and_truncate(tmp_path: pathlib.Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "a.log"
    expected = chain_of(RECORDS)
    _log_of(path, RECORDS, key).close()
    for check in (True, False):
        with VersionedLog.open(path, signing_key=key, check_signatures=check) as log:
            assert [log.chain_digest(v) for v in range(8)] == expected
            assert isinstance(log._chains, bytearray) and len(log._chains) == 8 * 32  # compact
    with VersionedLog.open(path, signing_key=key) as log:
        log.truncate_after(4)
        assert [log.chain_digest(v) for v in range(5)] == expected[:5]
        assert len(log._chains) == 5 * 32  # type: ignore[arg-type]
        with pytest.raises(KeyError):
            log.chain_digest(5)
        log.append([(5, 5000, b"another five"), (9, 9000, b"nine")])
        assert log.chain_digest(5) != expected[5]
        peer = _log_of(
            tmp_path / "b.log",
            RECORDS[:5] + [(5, 5000, b"another five"), (9, 9000, b"nine")],
            Ed25519PrivateKey.generate(),
        )
        with peer:
            for v in (0, 4, 5, 9):
                assert log.verify_peer(v, peer.signature(v), peer.public_key)  # type: ignore[arg-type]
            after = [log.chain_digest(v) for v in (0, 1, 2, 3, 4, 5, 9)]
    with VersionedLog.open(path, signing_key=key) as log:
        assert log.recovery is None
        assert [log.chain_digest(v) for v in (0, 1, 2, 3, 4, 5, 9)] == after
        log.truncate_after(-1)
        assert len(log._chains) == 0  # type: ignore[arg-type]
        log.append([(0, 0, body_of(0))])
        assert log.chain_digest(0) == expected[0]
    assert verify(path, public_key_bytes(key)).ok


@pytest.mark.parametrize("batches", [[8], [1] * 8, [3, 5], [2, 0, 6], [7, 1]])
@pytest.mark.parametrize("flush_between", [False, True])
def test_batches_give_the_same_chain_as_one(tmp_path: pathlib.Path, batches: list[int], flush_between: bool) -> None:
    key = Ed25519PrivateKey.generate()
    one = tmp_path / "one.log"
    _log_of(one, RECORDS, key).close()
    many = tmp_path / "many.log"
    with VersionedLog.open(many, signing_key=key) as log:
        start = 0
        for n in batches:
            log.append(RECORDS[start : start + n])
            start += n
            if flush_between:
                log.flush()
        assert [log.chain_digest(v) for v in range(8)] == chain_of(RECORDS)
    assert many.read_bytes() == one.read_bytes()  # ed25519 is deterministic: same key, same file


def test_verify_catches_a_forged_record_at_exactly_its_index(tmp_path: pathlib.Path) -> None:
    for k in (0, 4, 7):
        path, key = _signed(tmp_path)
        data = bytearray(path.read_bytes())
        at = record_offset(k, signed=True)
        data[at + REC_HEAD + 5] ^= 0x04  # change the body and fix the crc: only the chain can tell
        data[at + 20 : at + 24] = zlib.crc32(
            bytes(data[at + 4 : at + 20]) + bytes(data[at + REC_HEAD : record_offset(k + 1, signed=True)])
        ).to_bytes(4, "little")
        path.write_bytes(bytes(data))
        report = verify(path, public_key_bytes(key))
        assert report.bad is not None
        assert (report.bad.index, report.bad.offset, report.bad.reason, report.records) == (
            k,
            at,
            "bad signature",
            k,
        )
        path.unlink()


# ----------------------------------------------------------------------------------------
# Older and newer formats


def test_format_1_unsigned_log_opens_and_is_upgraded(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "old.log"
    fill(path, 5)
    set_format(path, 1)
    before = path.read_bytes()
    assert verify(path).ok and path.read_bytes() == before  # verify reads it, never upgrades
    with caplog.at_level(logging.INFO, logger="derecho.log"):
        log = VersionedLog.open(path)
    with log:
        assert log.recovery is None
        assert list(log.iter_from()) == [(v, 1000 * v, body_of(v)) for v in range(5)]
        log.append([(5, 5000, body_of(5))])
    data = path.read_bytes()
    assert int.from_bytes(data[8:10], "little") == 2
    assert int.from_bytes(data[12:16], "little") == zlib.crc32(data[:12])
    assert data[HEADER : record_offset(5)] == before[HEADER:]  # the records are untouched
    assert any("upgraded" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="derecho.log"), VersionedLog.open(path) as log:
        assert len(log) == 6
    assert not any("upgraded" in r.getMessage() for r in caplog.records)


def test_format_1_signed_log_is_refused(tmp_path: pathlib.Path) -> None:
    path, key = _signed(tmp_path)
    set_format(path, 1)
    before = path.read_bytes()
    with pytest.raises(LogError, match="signed with a group key by an older version") as caught:
        VersionedLog.open(path, signing_key=key)
    assert str(path) in str(caught.value) and "move it aside" in str(caught.value)
    assert not isinstance(caught.value, LogCorrupted)
    with pytest.raises(LogError, match="group key"):
        VersionedLog.open(path)  # refused before any key check
    assert path.read_bytes() == before
    report = verify(path, public_key_bytes(key))
    assert not report.ok and report.bad is not None and "format 1" in report.bad.reason


@pytest.mark.parametrize("fmt", [0, 3, 7, 0xFFFF])
@pytest.mark.parametrize("signed", [False, True])
def test_unknown_format_is_refused_in_one_line(tmp_path: pathlib.Path, fmt: int, signed: bool) -> None:
    path = tmp_path / "x.log"
    key = Ed25519PrivateKey.generate() if signed else None
    fill(path, 2, key)
    set_format(path, fmt)
    with pytest.raises(LogError) as caught:
        VersionedLog.open(path, signing_key=key)
    message = str(caught.value)
    assert f"format {fmt}, this version reads 1 and 2" in message and "\n" not in message
    assert not isinstance(caught.value, LogCorrupted)
    report = verify(path)
    assert report.bad is not None and report.bad.reason == "unsupported format"


# ----------------------------------------------------------------------------------------
# Reads


@pytest.fixture
def sparse(tmp_path: pathlib.Path) -> VersionedLog:
    """Versions 10, 20, 30, 40 at times 100, 200, 200, 300; 30 and 40 not yet flushed."""
    log = VersionedLog.open(tmp_path / "r.log")
    log.append([(10, 100, b"a"), (20, 200, b"b")])
    log.flush()
    log.append([(30, 200, b"c"), (40, 300, b"d")])
    yield log
    log.close()


def test_read_exact_version(sparse: VersionedLog) -> None:
    assert [sparse.read(v) for v in (10, 20, 30, 40)] == [b"a", b"b", b"c", b"d"]
    for missing in (-1, 0, 9, 11, 35, 41, 2**70):
        with pytest.raises(KeyError):
            sparse.read(missing)


@pytest.mark.parametrize(
    ("version", "expected"),
    [(-5, None), (9, None), (10, 10), (19, 10), (20, 20), (29, 20), (30, 30), (40, 40), (10**9, 40)],
)
def test_latest_at_or_before_version(sparse: VersionedLog, version: int, expected: int | None) -> None:
    got = sparse.latest_at_or_before_version(version)
    assert (got[0] if got else None) == expected
    if got:
        assert got == (expected, {10: 100, 20: 200, 30: 200, 40: 300}[expected], sparse.read(expected))


@pytest.mark.parametrize(
    ("ts", "expected"),
    [(0, None), (99, None), (100, 10), (199, 10), (200, 30), (299, 30), (300, 40), (10**12, 40)],
)
def test_latest_at_or_before_time(sparse: VersionedLog, ts: int, expected: int | None) -> None:
    got = sparse.latest_at_or_before_time(ts)
    assert (got[0] if got else None) == expected  # equal times: the last record among them


def test_reads_on_an_empty_log(tmp_path: pathlib.Path) -> None:
    with VersionedLog.open(tmp_path / "e.log") as log:
        assert log.latest_at_or_before_version(10) is None
        assert log.latest_at_or_before_time(10) is None
        assert list(log.iter_from()) == []
        log.truncate_after(3)
        assert len(log) == 0


def test_iter_from(sparse: VersionedLog) -> None:
    assert [r[0] for r in sparse.iter_from()] == [10, 20, 30, 40]
    assert [r[0] for r in sparse.iter_from(10)] == [20, 30, 40]
    assert [r[0] for r in sparse.iter_from(25)] == [30, 40]
    assert list(sparse.iter_from(40)) == []
    it = sparse.iter_from(15)
    assert next(it) == (20, 200, b"b")
    sparse.flush()  # the unflushed ones move to the file mid-iteration
    sparse.append([(50, 400, b"e")])  # and a new one joins
    assert [r[0] for r in it] == [30, 40, 50]


def test_iter_from_streams_in_bounded_reads(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.log"
    sizes = [(v * 7919) % 9000 for v in range(600)]  # up to 9 kB, some larger than a chunk
    with VersionedLog.open(path, fsync=False) as log:
        log.append((v, v, bytes([v % 251]) * sizes[v]) for v in range(600))
    monkeypatch.setattr(log_store, "_READ_CHUNK", 4096)
    reads: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return real_pread(fd, n, offset)

    with VersionedLog.open(path) as log:
        monkeypatch.setattr(log_store.os, "pread", counting_pread)
        for v, ts, body in log.iter_from(99):
            assert (ts, body) == (v, bytes([v % 251]) * sizes[v])
    assert max(reads) <= 9000 + 64 and sum(reads) < 3 * path.stat().st_size


@pytest.mark.parametrize("max_bytes", [1, 100, 4096, 1 << 20])
@pytest.mark.parametrize("after", [-1, 0, 99, 350, 599])
@pytest.mark.parametrize("signed", [False, True])
def test_iter_batches_gives_what_iter_from_gives(
    tmp_path: pathlib.Path, max_bytes: int, after: int, signed: bool
) -> None:
    """A batch at a time, from the file and the unflushed buffer alike, in order."""
    path = tmp_path / "b.log"
    sizes = [(v * 7919) % 9000 for v in range(600)]  # up to 9 kB: some records larger than a batch
    key = Ed25519PrivateKey.generate() if signed else None
    with VersionedLog.open(path, signing_key=key, fsync=False) as log:
        log.append((v, v, bytes([v % 251]) * sizes[v]) for v in range(500))
        log.flush()
        log.append((v, v, bytes([v % 251]) * sizes[v]) for v in range(500, 600))  # buffered
        batches = list(log.iter_batches(after, max_bytes))
        assert all(batches) and [r for b in batches for r in b] == list(log.iter_from(after))
        if max_bytes >= 4096 and after < 400:
            assert len(batches) < 600 - after  # several records a read


def test_iter_batches_catches_a_record_changed_on_disk(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.log"
    fill(path, 10)
    with VersionedLog.open(path) as log:
        flip(path, record_offset(6) + REC_HEAD + 3)
        with pytest.raises(LogCorrupted, match="record 6"):
            list(log.iter_batches())
        os.truncate(path, record_offset(8))
        with pytest.raises(LogCorrupted, match="cut short"):
            list(log.iter_batches(7))


def _scan_record_by_record(path: pathlib.Path) -> tuple[list[int], list[int], list[int], int, object]:
    """The open-time scan without its chunked fast path: every record through
    ``_check_record`` (the reference the fast path must agree with)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        header = log_store._decode_header(os.pread(fd, HEADER + KEY, 0), path)
        window = log_store._Window(fd, size)
        versions, times, offsets = [], [], []
        offset, last_v, last_t = header.size, -1, 0
        bad = None
        while offset < size:
            length, v, t, _c, reason = log_store._check_record(window, offset, size, 0, last_v, last_t, None, None)
            if reason is not None:
                if log_store._zero_tail(fd, offset, size):
                    reason = log_store.TORN
                elif reason == log_store.TORN:
                    reason = log_store._classify_torn(fd, offset, size, 0, last_v)
                bad = log_store.BadRecord(len(versions), offset, v if v >= 0 else None, reason)
                break
            versions.append(v)
            times.append(t)
            offsets.append(offset)
            last_v, last_t = v, t
            offset += REC_HEAD + length
        return versions, times, offsets, offset, bad
    finally:
        os.close(fd)


def _bigger_than_a_chunk(path: pathlib.Path) -> None:
    with VersionedLog.open(path) as log:
        log.append([(0, 0, b"a" * 50), (1, 1, b"b" * 5000), (2, 2, b"c" * 50), (3, 3, b"d" * 3000), (4, 4, b"e")])


def _raw_record(version: int, ts: int, body: bytes, length: int | None = None) -> bytes:
    """A record as the format lays it out, its crc right (``length``: a damaged length field)."""
    vt = version.to_bytes(8, "little") + ts.to_bytes(8, "little")
    crc = zlib.crc32(body, zlib.crc32(vt))
    return (len(body) if length is None else length).to_bytes(4, "little") + vt + crc.to_bytes(4, "little") + body


def _append_raw(path: pathlib.Path, *records: bytes) -> None:
    path.write_bytes(path.read_bytes() + b"".join(records))


DAMAGE = [
    ("clean", lambda p: None),
    ("version repeated", lambda p: _append_raw(p, _raw_record(99, 99_000, b"x" * 40), _raw_record(100, 10**6, b"y"))),
    ("time decreasing", lambda p: _append_raw(p, _raw_record(100, 5, b"x" * 40))),
    ("bad length", lambda p: _append_raw(p, _raw_record(100, 10**6, b"x", 10**6), _raw_record(101, 10**6, b"y"))),
    ("torn tail", lambda p: os.truncate(p, p.stat().st_size - 7)),
    ("body crc", lambda p: flip(p, record_offset(30) + REC_HEAD + 1)),
    ("crc across a chunk", lambda p: flip(p, record_offset(61) + REC_HEAD + 30)),
    ("version field", lambda p: flip(p, record_offset(44) + 4 + 7, 0x80)),
    ("length field", lambda p: flip(p, record_offset(70) + 1)),
    ("zero tail", lambda p: p.write_bytes(p.read_bytes() + bytes(100))),
    ("big records", _bigger_than_a_chunk),
    ("big record torn", lambda p: (_bigger_than_a_chunk(p), os.truncate(p, record_offset(1) + 4000))),
]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_the_chunked_scan_agrees_with_checking_record_by_record(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, damage: tuple[str, object]
) -> None:
    monkeypatch.setattr(log_store, "_READ_CHUNK", 1000)  # many chunk edges, records across them
    path = tmp_path / "s.log"
    fill(path, 100)
    if damage[0].startswith("big"):
        path.unlink()
    damage[1](path)  # type: ignore[operator]
    want = _scan_record_by_record(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        header = log_store._decode_header(os.pread(fd, HEADER + KEY, 0), path)
        got = log_store._scan(fd, header, os.fstat(fd).st_size, None)
    finally:
        os.close(fd)
    assert (list(got.versions), list(got.timestamps), list(got.offsets), got.end, got.bad) == want


def test_iterating_across_truncate_stops(sparse: VersionedLog) -> None:
    it = sparse.iter_from()
    next(it)
    sparse.truncate_after(20)
    with pytest.raises(LogError, match="truncated"):
        next(it)


def test_spilled_buffer_reads_from_file_and_buffer(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_store, "_SPILL_SIZE", 1000)  # write (without fsync) past 1000 bytes
    path = tmp_path / "x.log"
    with VersionedLog.open(path) as log:
        for v in range(100):
            log.append([(v, v, body_of(v))])
        assert log.durable_version == -1 and path.stat().st_size > HEADER
        assert all(log.read(v) == body_of(v) for v in range(100))
        assert [r[0] for r in log.iter_from(50)] == list(range(51, 100))
        assert log.flush() == 99


# ----------------------------------------------------------------------------------------
# Truncation


def test_truncate_after(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.log"
    fill(path, 10)
    with VersionedLog.open(path) as log:
        log.append([(10, 10_000, b"unflushed")])
        log.truncate_after(5)
        assert (len(log), log.last_version, log.durable_version) == (6, 5, 5)
        assert path.stat().st_size == record_offset(6)
        with pytest.raises(KeyError):
            log.read(6)
        assert log.latest_at_or_before_time(10**9) == (5, 5000, body_of(5))
        log.truncate_after(100)  # nothing above: no change
        assert len(log) == 6
        log.append([(6, 6000, b"new six")])  # versions above 5 are free again
    with VersionedLog.open(path) as log:
        assert log.recovery is None and log.read(6) == b"new six" and len(log) == 7
        log.truncate_after(-1)
        assert (len(log), log.last_version, log.first_version) == (0, -1, -1)
    assert path.stat().st_size == HEADER


# ----------------------------------------------------------------------------------------
# Keys


def test_generate_and_load_keys(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "keys" / "node1.key"
    key = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_bytes(load_signing_key(path)) == public_key_bytes(key)
    assert load_public_key(f"{path}.pub") == public_key_bytes(key)
    assert load_public_key(path) == public_key_bytes(key)
    assert load_public_key(public_key_bytes(key).hex()) == public_key_bytes(key)
    with pytest.raises(FileExistsError):
        generate_key(path)
    raw = tmp_path / "raw.key"
    raw.write_bytes(bytes(range(32)))
    expected = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    assert public_key_bytes(load_signing_key(raw)) == public_key_bytes(expected)


def _self_signed_cert(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM self-signed certificate for ``key``, as a node's TLS certificate would be."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_tls_key_and_certificate_sign_and_check_a_log(tmp_path: pathlib.Path) -> None:
    tls_key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "node.key"
    key_file.write_bytes(
        tls_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_file = tmp_path / "node.crt"
    cert_file.write_bytes(_self_signed_cert(tls_key))
    assert load_public_key(cert_file) == public_key_bytes(tls_key)
    signer = load_signing_key(key_file)
    assert public_key_bytes(signer) == public_key_bytes(tls_key)
    fill(tmp_path / "x.log", 3, signer)
    assert verify(tmp_path / "x.log", load_public_key(cert_file)).ok
    both = tmp_path / "bundle.pem"  # a certificate followed by its key: the certificate wins
    both.write_bytes(cert_file.read_bytes() + key_file.read_bytes())
    assert load_public_key(both) == public_key_bytes(tls_key)


def test_certificate_of_another_key_type_is_refused(tmp_path: pathlib.Path) -> None:
    cert_file = tmp_path / "ec.crt"
    cert_file.write_bytes(_self_signed_cert(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(LogSignatureError, match="not an ed25519 key"):
        load_public_key(cert_file)
    broken = tmp_path / "broken.crt"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(LogSignatureError, match=str(broken)):
        load_public_key(broken)


BAD_PEM = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize("content", [None, b"", b"not a key\n", BAD_PEM])
def test_bad_key_file_names_the_path(tmp_path: pathlib.Path, content: bytes | None) -> None:
    path = tmp_path / "bad.key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LogSignatureError, match=str(path)):
        load_signing_key(path)


# ----------------------------------------------------------------------------------------
# verify_dir and the command line


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "derecho_actors.tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_verify_dir_and_cli(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    key = generate_key(tmp_path / "node.key")
    fill(data / "a.log", 5)
    fill(data / "shard0" / "b.log", 6, key)
    (data / "notes.txt").write_text("ignored")
    reports = verify_dir(data)
    assert [(r.path.name, r.ok, r.records, r.signed) for r in reports] == [
        ("a.log", True, 5, False),
        ("b.log", True, 6, True),
    ]

    good = cli("verify", str(data))
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("ok ") == 2
    assert "5 records" in good.stdout and "6 records (signed)" in good.stdout

    flip(data / "shard0" / "b.log", record_offset(3, signed=True) + REC_HEAD + 1)
    bad = cli("verify", str(data))
    assert bad.returncode == 1
    line = next(x for x in bad.stdout.splitlines() if "b.log" in x)
    assert f"record 3 at offset {record_offset(3, signed=True)} (version 3): bad crc" in line
    assert "a.log: 5 records" in bad.stdout

    one = cli("verify", str(data / "a.log"), "--key", f"{tmp_path / 'node.key'}.pub")
    assert one.returncode == 1 and "not signed" in one.stdout
    missing = cli("verify", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_keygen_then_verify_with_key(tmp_path: pathlib.Path) -> None:
    keyfile = tmp_path / "k" / "signing.key"
    made = cli("keygen", str(keyfile))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    pub_hex = made.stdout.split("public key: ")[1].strip()
    key = load_signing_key(keyfile)
    assert pub_hex == public_key_bytes(key).hex()
    fill(tmp_path / "d" / "x.log", 3, key)
    assert cli("verify", str(tmp_path / "d"), "--key", pub_hex).returncode == 0
    assert cli("verify", str(tmp_path / "d"), "--key", str(keyfile)).returncode == 0
    wrong = cli("verify", str(tmp_path / "d"), "--key", bytes(32).hex())
    assert wrong.returncode == 1 and "wrong key" in wrong.stdout
    again = cli("keygen", str(keyfile))
    assert again.returncode == 2 and "already exists" in again.stderr

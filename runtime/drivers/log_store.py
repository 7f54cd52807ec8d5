"""The on-disk versioned log of a persistent replicated object.

One file per log: a header, then records appended one after the other. Each record holds one
version of the object's state (or a delta): its version number, a timestamp in nanoseconds
and an opaque body. Versions strictly increase along the file and timestamps never decrease,
so a version or a point in time is found by bisecting a small in-memory index (version,
timestamp and file offset per record, never the bodies). A log may be signed by the node
that writes it, with that node's own ed25519 key (the key of its TLS certificate): each record
then carries a signature over a chain digest of the whole log up to it, so that nobody without
the private key can change, drop or reorder records without ``verify`` noticing (except by
cutting the tail off, which a torn write can also do), and so that a peer holding the public
key can check that its own log equals ours up to a version (:meth:`VersionedLog.verify_peer`).

File format (format version 2). Every integer is little-endian, unsigned.

File header, 16 bytes, then the public key if the log is signed::

    offset size  field
    0      8     magic           b"DRCHLOG\\n"
    8      2     format_version  2
    10     2     flags           bit 0: signed; every other bit must be 0
    12     4     header_crc      zlib.crc32 of bytes 0..11, then of the public key if signed
    16     32    public_key      only if signed: the raw ed25519 public key of the node
                                 that writes the log

Records follow at once (at offset 16, or 48 when signed), each laid out as::

    size  field
    4     length        u32, number of bytes in body
    8     version       u64
    8     timestamp_ns  u64
    4     crc32         zlib.crc32 of version (8 bytes) + timestamp_ns (8 bytes) + body
                        + signature (when signed), exactly as they are in the file
    length body
    64    signature     only if signed: ed25519 signature (RFC 8032), by the header's key, of
                        DOMAIN + chain (see below)

Chain digest (signed logs only). Record i has the chain digest::

    chain_i = SHA-256(chain_{i-1} || version (u64) || timestamp_ns (u64) || body)

with chain_{-1} = 32 zero bytes, and its signature signs ``DOMAIN + chain_i`` where
``DOMAIN = b"derecho-log-v2"``. The prefix keeps a log signature from being taken for
anything else the node's key signs (TLS handshakes among them) and the other way round. The
chain does not depend on the key: two logs with the same records, in the same order, have
the same chain digest at every version, whoever signed them, and (short of a SHA-256
collision) logs that differ anywhere up to a version have different digests there and at
every later version. Chain digests are not stored: opening a signed log recomputes them as it
reads every record and keeps them in memory (32 bytes a record). So a peer's signature at
version v that verifies, with the peer's public key, over *our* chain digest at v proves that
the holder of that key signed a log whose records up to v are exactly ours; which node that is
depends on where the caller got the key (the peer's TLS certificate), which this module does
not check.

Older formats. Format 1 had the same layout but signed each record with one group-wide key
over version + timestamp_ns + body + the previous record's signature. An unsigned format-1
log is read as it is and its header is rewritten to format 2 on open (logged at INFO); a
signed format-1 log is refused (LogError): check it with the older version, or move it aside
so the node fetches its state from the group. Other formats are refused too.

There is no end marker: the file ends after the last whole record. The only index on disk is
the optional checkpoint next to the log (``<log>.ckpt``, ``runtime.drivers.log_checkpoint``):
the index of the records up to one version and its owner's state there, used on open only if
the crc32 of the log's bytes up to that version still matches (one pass of ``zlib.crc32``
instead of a check per record; the records after it are checked one by one as below).

Recovery. Opening a log reads it through once, checking every record: its length fits in
the file, its crc, its version is above the previous one's, its timestamp is not below it,
and when signed its signature over the recomputed chain digest. The first record that fails
ends the valid prefix: the file is truncated there and a WARNING is logged on the
``derecho.log`` logger. The reasons, as ``Recovery.reason`` and :func:`verify` give them:
``torn``, ``bad length``, ``bad crc``, ``bad signature``, ``version not increasing``,
``timestamp decreasing``.

A record that runs past the end of the file is the tail of a write that a crash cut short
(``torn``), as is a tail of zero bytes; it is dropped with the warning only. A record that
runs past the end although a valid record starts somewhere after it had its length field
damaged (``bad length``; tails over 256 KiB are not searched and count as such). Anything
other than a torn tail means the disk or someone changed the file, so the dropped bytes are
first copied to ``<path>.damaged-<n>`` (the first free n from 1) for inspection.
``VersionedLog.recovery`` says what happened, or is None when the file was clean.
:func:`verify` makes the same checks without changing anything and names the first bad
record.

Writes. ``append`` encodes records into a memory buffer; ``flush`` hands the buffer to the
operating system in one ``write`` and then calls ``fsync`` (unless the log was opened with
``fsync=False``). Only flushed records survive a crash: ``durable_version`` is the last of
them. A log is used by one thread at a time and opened by one process at a time (an
exclusive ``flock`` on the file enforces the second).
"""

from __future__ import annotations

import bisect
import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import struct
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.drivers import log_checkpoint
from runtime.drivers.log_checkpoint import CheckpointFile, LogCheckpoint
from runtime.errors import LogCorrupted, LogError, LogSignatureError

log = logging.getLogger("derecho.log")

MAGIC = b"DRCHLOG\n"
FORMAT_VERSION = 2
OLD_FORMAT_VERSION = 1  # same layout; signed with a group key over the previous signature
FLAG_SIGNED = 0x0001
KNOWN_FLAGS = FLAG_SIGNED

FILE_HEADER = struct.Struct("<8sHHI")
RECORD_HEADER = struct.Struct("<IQQI")
VERSION_TIME = struct.Struct("<QQ")
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
CHAIN_SIZE = 32  # SHA-256
NO_CHAIN = bytes(CHAIN_SIZE)  # the chain digest before the first record
DOMAIN = b"derecho-log-v2"  # prefixed to the chain digest a record's signature signs
MAX_U32 = 0xFFFFFFFF
MAX_U64 = 0xFFFFFFFFFFFFFFFF

# Reasons a record is bad, as recovery and verify report them.
TORN = "torn"  # stops short of the end of the file: the tail of an interrupted write
BAD_LENGTH = "bad length"  # runs past the end of the file, yet a valid record follows it
BAD_CRC = "bad crc"
BAD_SIGNATURE = "bad signature"
BAD_ORDER = "version not increasing"
BAD_TIME = "timestamp decreasing"
# Reasons the whole file is bad (no record index).
BAD_HEADER = "bad header"
WRONG_KEY = "wrong key"
NOT_SIGNED = "not signed"
OLD_SIGNED = "format 1 signed log (group key), check it with the older version"
UNSUPPORTED = "unsupported format"

_READ_CHUNK = 1 << 20  # bytes read at a time when scanning or streaming
_RESYNC_LIMIT = 256 * 1024  # largest torn-looking tail searched for a later valid record
_SPILL_SIZE = 64 << 20  # unflushed bytes beyond which append writes (without fsync) early


# ----------------------------------------------------------------------------------------
# Reports


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """The first record that failed a check. ``index`` counts records from 0 (None when the
    file header itself is bad); ``version`` is None when it could not be read."""

    index: int | None
    offset: int
    version: int | None
    reason: str

    def describe(self) -> str:
        if self.index is None:
            return f"{self.reason} (file header)"
        version = "unreadable" if self.version is None else str(self.version)
        return f"record {self.index} at offset {self.offset} (version {version}): {self.reason}"


@dataclasses.dataclass(frozen=True)
class Recovery:
    """What opening a log had to drop: ``records_kept`` whole records stayed, then
    ``bytes_dropped`` bytes from the first bad record on were cut off the file (and copied to
    ``damaged_copy`` unless they were only a torn tail)."""

    records_kept: int
    bytes_dropped: int
    first_bad_index: int
    first_bad_offset: int
    first_bad_version: int | None
    reason: str
    damaged_copy: Path | None


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """The result of :func:`verify`: ``ok``, how many records passed every check, and the
    first bad record (or bad header, or wrong key) when not ok."""

    path: Path
    ok: bool
    records: int
    signed: bool
    bad: BadRecord | None = None

    def describe(self) -> str:
        if self.ok:
            return f"ok   {self.path}: {self.records} records{' (signed)' if self.signed else ''}"
        assert self.bad is not None
        before = f"; the {self.records} records before it are good" if self.bad.index else ""
        return f"BAD  {self.path}: {self.bad.describe()}{before}"


# ----------------------------------------------------------------------------------------
# Keys


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of the public key (of a private key, its public part)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Make a new ed25519 signing key, write it to ``path`` (PEM, PKCS#8, unencrypted, mode
    0600) and its public key to ``<path>.pub`` (PEM), and return it. Never overwrites: an
    existing ``path`` raises FileExistsError."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        _write_all(fd, pem, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    Path(f"{target}.pub").write_bytes(public_pem)
    return key


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an ed25519 private key: PEM (PKCS#8, unencrypted, as :func:`generate_key` and
    the node's TLS key file are written) or the 32 raw bytes of the seed. Raises
    LogSignatureError naming the path."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise LogSignatureError(
            f"cannot read the signing key {target}: {exc.strerror or exc}; create one with `derecho-actors keygen PATH`"
        ) from exc
    if len(data) == PUBLIC_KEY_SIZE:
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise LogSignatureError(
            f"{target} is not an unencrypted ed25519 private key (PEM or 32 raw bytes): {exc}; "
            "create one with `derecho-actors keygen PATH`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise LogSignatureError(
            f"{target} holds a {type(key).__name__}, not an ed25519 key; create one with `derecho-actors keygen PATH`"
        )
    return key


def load_public_key(source: str | os.PathLike[str]) -> bytes:
    """The raw public key named by ``source``: a file holding a PEM X.509 certificate (a
    node's TLS certificate, whose key signs its log), a PEM public or private key, 32 raw
    private-key bytes, or 64 hex digits of the public key; or those 64 hex digits
    themselves. Raises LogSignatureError naming the source."""
    text = os.fspath(source)
    target = Path(text)
    if not target.exists() and re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise LogSignatureError(f"cannot read the key {target}: {exc.strerror or exc}") from exc
    stripped = data.strip()
    if re.fullmatch(rb"[0-9a-fA-F]{64}", stripped):
        return bytes.fromhex(stripped.decode())
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            cert_key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError as exc:
            raise LogSignatureError(f"{target} is not a PEM X.509 certificate: {exc}") from exc
        if not isinstance(cert_key, Ed25519PublicKey):
            raise LogSignatureError(f"{target} is a certificate for a {type(cert_key).__name__}, not an ed25519 key")
        return public_key_bytes(cert_key)
    if b"PUBLIC KEY" in data:
        try:
            public = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise LogSignatureError(f"{target} is not a PEM public key: {exc}") from exc
        if not isinstance(public, Ed25519PublicKey):
            raise LogSignatureError(f"{target} holds a {type(public).__name__}, not an ed25519 key")
        return public_key_bytes(public)
    return public_key_bytes(load_signing_key(target))


# ----------------------------------------------------------------------------------------
# Reading and checking the file


def _write_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def _read_exact(fd: int, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset``, or fewer only at the end of the file."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _Window:
    """Reads a file region through a sliding buffer, so scanning a large log costs one
    ``pread`` per megabyte rather than two per record."""

    def __init__(self, fd: int, end: int) -> None:
        self.fd = fd
        self.end = end
        self.start = 0
        self.data = b""

    def get(self, offset: int, size: int) -> bytes:
        rel = offset - self.start
        if rel < 0 or rel + size > len(self.data):
            want = min(max(size, _READ_CHUNK), self.end - offset)
            self.data = _read_exact(self.fd, offset, want) if want > 0 else b""
            self.start = offset
            rel = 0
        return self.data[rel : rel + size]


@dataclasses.dataclass(frozen=True)
class _Header:
    signed: bool
    public_key: bytes | None
    size: int  # where the first record starts
    format: int  # FORMAT_VERSION or OLD_FORMAT_VERSION


def _encode_header(public_key: bytes | None) -> bytes:
    flags = FLAG_SIGNED if public_key is not None else 0
    head = FILE_HEADER.pack(MAGIC, FORMAT_VERSION, flags, 0)[:12]
    key = public_key or b""
    crc = zlib.crc32(key, zlib.crc32(head))
    return FILE_HEADER.pack(MAGIC, FORMAT_VERSION, flags, crc) + key


def _decode_header(data: bytes, path: Path) -> _Header:
    """Parse the file header from the first bytes of the file; LogCorrupted when it is
    damaged, LogError when this version cannot read it (see :func:`_refuse_old_signed` for
    the one readable header it still refuses)."""
    if len(data) < FILE_HEADER.size:
        raise LogCorrupted(
            f"{path}: the file header is cut short ({len(data)} bytes); the file is not a "
            "usable log: move it aside to start a new one"
        )
    magic, fmt, flags, crc = FILE_HEADER.unpack_from(data)
    if magic != MAGIC:
        raise LogCorrupted(f"{path} is not a derecho-actors log (bad magic {magic!r}); check the path")
    signed = bool(flags & FLAG_SIGNED)
    size = FILE_HEADER.size + (PUBLIC_KEY_SIZE if signed else 0)
    key = data[FILE_HEADER.size : size] if signed else None
    if len(data) < size or zlib.crc32(key or b"", zlib.crc32(data[:12])) != crc:
        raise LogCorrupted(
            f"{path}: the file header fails its crc; the file cannot be trusted: "
            "move it aside and recover the object from another replica"
        )
    if fmt not in (OLD_FORMAT_VERSION, FORMAT_VERSION):
        raise LogError(f"{path}: log format {fmt}, this version reads {OLD_FORMAT_VERSION} and {FORMAT_VERSION}")
    if flags & ~KNOWN_FLAGS:
        raise LogError(f"{path}: unknown header flags {flags:#06x}; upgrade derecho-actors")
    return _Header(signed, key, size, fmt)


def _refuse_old_signed(path: Path, header: _Header) -> None:
    """A format-1 signed log chains group-key signatures, which this version cannot check:
    opening it would drop every record as badly signed, so refuse it whole instead."""
    if header.format == OLD_FORMAT_VERSION and header.signed:
        raise LogError(
            f"{path} was signed with a group key by an older version of derecho-actors (log "
            f"format {OLD_FORMAT_VERSION}), which this version cannot check: verify it with the "
            "older version, or move it aside so the node fetches the state from the group"
        )


def _upgrade_header(fd: int, path: Path, header: _Header) -> _Header:
    """Rewrite an unsigned format-1 header as format 2 (the records are laid out the same),
    so that the file states the format its new records follow. One 16-byte write."""
    if header.format != OLD_FORMAT_VERSION or header.signed:
        return header
    _write_all(fd, _encode_header(None), 0)
    os.fsync(fd)
    log.info(
        "log %s: upgraded from format %d to %d (unsigned, records unchanged)", path, OLD_FORMAT_VERSION, FORMAT_VERSION
    )
    return dataclasses.replace(header, format=FORMAT_VERSION)


def _chain(prev: bytes | bytearray | memoryview, version_time: bytes, body: bytes | bytearray | memoryview) -> bytes:
    """The chain digest of a record: see the module docstring."""
    digest = hashlib.sha256(prev)
    digest.update(version_time)
    digest.update(body)
    return digest.digest()


@dataclasses.dataclass
class _ScanResult:
    versions: array
    timestamps: array
    offsets: array
    chains: bytearray | None  # signed logs: CHAIN_SIZE bytes per record, in order
    end: int  # where the valid prefix ends
    bad: BadRecord | None


def _check_record(
    window: _Window,
    offset: int,
    end: int,
    sig_size: int,
    last_version: int,
    last_time: int,
    verifier: Ed25519PublicKey | None,
    prev_chain: bytes | None,
) -> tuple[int, int, int, bytes | None, str | None]:
    """Check the record at ``offset``: return (length, version, timestamp, chain digest, reason
    it is bad or None). The version is -1 when the record header itself is cut short; the
    chain digest is computed (from ``prev_chain``) only for signed logs."""
    head = window.get(offset, RECORD_HEADER.size)
    if len(head) < RECORD_HEADER.size:
        return 0, -1, 0, None, TORN
    length, version, timestamp, crc = RECORD_HEADER.unpack(head)
    if offset + RECORD_HEADER.size + length + sig_size > end:
        return length, version, timestamp, None, TORN
    rest = window.get(offset + RECORD_HEADER.size, length + sig_size)
    if zlib.crc32(rest, zlib.crc32(head[4:20])) != crc:
        return length, version, timestamp, None, BAD_CRC
    if version <= last_version:
        return length, version, timestamp, None, BAD_ORDER
    if timestamp < last_time:
        return length, version, timestamp, None, BAD_TIME
    if prev_chain is None:
        return length, version, timestamp, None, None
    view = memoryview(rest)
    chain = _chain(prev_chain, head[4:20], view[:length])
    if verifier is not None:
        try:
            verifier.verify(bytes(view[length:]), DOMAIN + chain)
        except InvalidSignature:
            return length, version, timestamp, chain, BAD_SIGNATURE
    return length, version, timestamp, chain, None


def _scan(
    fd: int, header: _Header, end: int, verifier: Ed25519PublicKey | None, resume: CheckpointFile | None = None
) -> _ScanResult:
    """Walk the records from the header to ``end``, indexing them (and, when signed,
    recomputing their chain digests), up to the first bad one. ``resume``: a checkpoint
    whose records the caller proved unchanged (its prefix crc): its index stands for them
    and the walk starts after them."""
    sig_size = SIGNATURE_SIZE if header.signed else 0
    versions, timestamps, offsets = array("Q"), array("Q"), array("Q")
    chains = bytearray() if header.signed else None
    offset = header.size
    last_version, last_time = -1, 0
    prev_chain = NO_CHAIN if header.signed else None
    if resume is not None:
        versions, timestamps, offsets = resume.versions, resume.timestamps, resume.offsets
        offset, last_version, last_time = resume.end, resume.version, resume.timestamps[resume.count - 1]
        if header.signed:
            assert resume.chains is not None
            chains = resume.chains
            prev_chain = bytes(chains[-CHAIN_SIZE:])
    window = _Window(fd, end)
    bad: BadRecord | None = None
    while offset < end:
        if prev_chain is None:  # unsigned: the good records a chunk at a time
            offset, last_version, last_time = _scan_good(
                fd, offset, end, last_version, last_time, versions, timestamps, offsets
            )
            if offset >= end:
                break
        length, version, timestamp, chain, reason = _check_record(
            window, offset, end, sig_size, last_version, last_time, verifier, prev_chain
        )
        if reason is not None:
            if _zero_tail(fd, offset, end):
                reason = TORN  # the file grew but the write never landed
            elif reason == TORN:
                reason = _classify_torn(fd, offset, end, sig_size, last_version)
            bad = BadRecord(len(versions), offset, version if version >= 0 else None, reason)
            break
        versions.append(version)
        timestamps.append(timestamp)
        offsets.append(offset)
        if chains is not None and chain is not None:
            chains += chain
            prev_chain = chain
        last_version, last_time = version, timestamp
        offset += RECORD_HEADER.size + length + sig_size
    return _ScanResult(versions, timestamps, offsets, chains, offset, bad)


def _scan_good(
    fd: int,
    offset: int,
    end: int,
    last_version: int,
    last_time: int,
    versions: array,
    timestamps: array,
    offsets: array,
) -> tuple[int, int, int]:
    """Index the unsigned records from ``offset`` on, a chunk of the file at a time, while
    each passes every check of :func:`_check_record` (whole, crc, version order, time
    order); stop at the first that does not or that a chunk cannot hold whole (a record
    larger than ``_READ_CHUNK``, or the end of the file), for :func:`_check_record` to judge
    it. Returns where it stopped and the last good version and timestamp."""
    unpack_from = RECORD_HEADER.unpack_from
    head_size = RECORD_HEADER.size
    crc32 = zlib.crc32
    while offset < end:
        data = _read_exact(fd, offset, min(_READ_CHUNK, end - offset))
        n = len(data)
        pos = 0
        failed = False
        while pos + head_size <= n:
            length, version, timestamp, crc = unpack_from(data, pos)
            stop = pos + head_size + length
            if stop > n:
                break  # runs past the chunk: read on from it (or judge it, if it starts the chunk)
            if (
                version <= last_version
                or timestamp < last_time
                or crc32(data[pos + head_size : stop], crc32(data[pos + 4 : pos + 20])) != crc
            ):
                failed = True
                break
            versions.append(version)
            timestamps.append(timestamp)
            offsets.append(offset + pos)
            last_version, last_time = version, timestamp
            pos = stop
        offset += pos
        if failed or pos == 0:
            break
    return offset, last_version, last_time


def _zero_tail(fd: int, offset: int, end: int) -> bool:
    """Whether the file holds only zero bytes from ``offset`` on (up to ``_RESYNC_LIMIT``)."""
    if end - offset > _RESYNC_LIMIT:
        return False
    data = _read_exact(fd, offset, end - offset)
    return data.count(0) == len(data)


def _classify_torn(fd: int, offset: int, end: int, sig_size: int, last_version: int) -> str:
    """A record runs past the end of the file: the torn tail of a write, or a damaged
    length field? Damaged if a valid record starts later in the file; tails longer than
    ``_RESYNC_LIMIT`` are not searched and count as damaged (the caller keeps a copy)."""
    if end - offset > _RESYNC_LIMIT:
        return BAD_LENGTH
    data = _read_exact(fd, offset, end - offset)
    limit = len(data) - RECORD_HEADER.size - sig_size
    unpack = RECORD_HEADER.unpack_from
    for rel in range(1, limit + 1):
        length, version, _ts, crc = unpack(data, rel)
        if version <= last_version or length > limit - rel:
            continue
        body = data[rel + RECORD_HEADER.size : rel + RECORD_HEADER.size + length + sig_size]
        if zlib.crc32(body, zlib.crc32(data[rel + 4 : rel + 20])) == crc:
            return BAD_LENGTH
    return TORN


def _checked_record(version: object, timestamp: object, body: object, last_version: int, last_time: int) -> bytes:
    """A record :meth:`VersionedLog.append` could not take at a glance: its body as bytes
    (a bytearray or a memoryview, copied), or the error that says what is wrong with it."""
    if not isinstance(version, int) or version <= last_version or version > MAX_U64:
        raise ValueError(
            f"version {version!r} must be an int above the log's last version "
            f"{last_version} (versions strictly increase)"
        )
    if not isinstance(timestamp, int) or timestamp < last_time or timestamp > MAX_U64:
        raise ValueError(
            f"timestamp {timestamp!r} of version {version} must be an int >= {last_time} "
            "(the previous record's; timestamps never decrease)"
        )
    if isinstance(body, memoryview):
        body = body.tobytes()
    elif isinstance(body, bytearray):
        body = bytes(body)
    elif not isinstance(body, bytes):
        raise TypeError(f"the body of version {version} must be bytes, not {type(body).__name__}")
    if len(body) > MAX_U32:
        raise ValueError(f"the body of version {version} is {len(body)} bytes (limit {MAX_U32})")
    return body


# ----------------------------------------------------------------------------------------
# The log


class VersionedLog:
    """An append-only file of (version, timestamp_ns, body) records; see the module
    docstring for the format. Use :meth:`open`; ``with`` closes it."""

    def __init__(
        self,
        path: Path,
        fd: int,
        header: _Header,
        scan: _ScanResult,
        signing_key: Ed25519PrivateKey | None,
        fsync: bool,
        recovery: Recovery | None,
    ) -> None:
        self.path = path
        self.signed = header.signed
        self.recovery = recovery
        self._public_key = header.public_key
        self._fd: int | None = fd
        self._sig_size = SIGNATURE_SIZE if header.signed else 0
        self._key = signing_key
        self._fsync = fsync
        self._versions = scan.versions
        self._timestamps = scan.timestamps
        self._offsets = scan.offsets
        self._chains = scan.chains  # signed logs: CHAIN_SIZE bytes per record, in memory only
        self._written = scan.end  # bytes handed to the operating system
        self._buf = bytearray()  # encoded records after self._written
        self._durable_count = len(scan.versions)
        self._generation = 0  # bumped by truncate_after, to stop iterators that span it
        self._header_size = header.size
        # Checkpoints (runtime.drivers.log_checkpoint): the one found on open, for the owner
        # to take once; the version of the one on disk (-1: none); and the crc32 of the
        # log's bytes from the first record up to ``_crc_end``, kept so that each new
        # checkpoint reads only what was written since the last one.
        self.checkpoint: LogCheckpoint | None = None
        self._ckpt_path = log_checkpoint.checkpoint_path(path)
        self._ckpt_version = -1
        self._crc_end = header.size
        self._crc = 0

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        signing_key: Ed25519PrivateKey | None = None,
        fsync: bool = True,
        check_signatures: bool = True,
    ) -> VersionedLog:
        """Open the log at ``path``, creating it (and its folder) if absent, and recover it:
        see the module docstring. A new log is signed when ``signing_key`` is given; an
        existing signed log needs the key it was created with (LogSignatureError).

        Checking signatures costs about 0.1 ms a record (ten seconds for 100,000 records);
        ``check_signatures=False`` checks only crcs on open (the chain digests are still
        recomputed), which catches a damaged disk but not a deliberate edit (``verify`` still
        catches that). A format-1 log is upgraded or refused: see the module docstring."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        wanted_key = public_key_bytes(signing_key) if signing_key is not None else None
        fd = os.open(target, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LogError(
                    f"{target} is open in another process (or twice in this one); "
                    "stop the other node using this data_dir first"
                ) from None
            size = os.fstat(fd).st_size
            if size == 0:
                _write_all(fd, _encode_header(wanted_key), 0)
                os.fsync(fd)
                _fsync_dir(target.parent)
                size = os.fstat(fd).st_size
            header = _decode_header(_read_exact(fd, 0, FILE_HEADER.size + PUBLIC_KEY_SIZE), target)
            _refuse_old_signed(target, header)
            _check_key(target, header, wanted_key)
            header = _upgrade_header(fd, target, header)
            verifier = None
            if header.public_key is not None and check_signatures:
                verifier = Ed25519PublicKey.from_public_bytes(header.public_key)
            found = _usable_checkpoint(fd, target, header, size)
            scan = _scan(fd, header, size, verifier, found if verifier is None else None)
            if found is not None and not _indexes(scan, found):
                found = None  # (a full scan that stopped before the checkpoint's last record)
            recovery = _recover(fd, target, scan, size) if scan.bad is not None else None
            opened = cls(target, fd, header, scan, signing_key, fsync, recovery)
            if found is not None:
                opened.checkpoint = found.checkpoint()
                opened._ckpt_version = found.version
                opened._crc_end, opened._crc = found.end, found.prefix_crc
            return opened
        except BaseException:
            os.close(fd)
            raise

    # -- writing -------------------------------------------------------------------------

    def append(self, records: Iterable[tuple[int, int, bytes]]) -> None:
        """Buffer ``(version, timestamp_ns, body)`` records; nothing reaches the file until
        :meth:`flush`. Versions must strictly increase and timestamps must not decrease,
        across calls too (ValueError, and then none of this call's records is kept).

        A persistent replica appends one record per ordered call, so this loop is kept short:
        a record that passes every check in one comparison (the common case) goes straight
        into the buffer and the in-memory index, which are cut back if a later one fails."""
        fd = self._require_open()
        key = self._key
        if self.signed and key is None:  # pragma: no cover - open() refuses this
            raise LogSignatureError(f"{self.path} is signed; open it with its signing key")
        pack_vt = VERSION_TIME.pack
        pack_head = RECORD_HEADER.pack
        crc32 = zlib.crc32
        buf = self._buf
        mark = len(buf)  # on a bad record, the buffer and the index are cut back here
        versions, timestamps, offsets = self._versions, self._timestamps, self._offsets
        count = len(versions)
        add_version, add_time, add_offset = versions.append, timestamps.append, offsets.append
        new_chains = bytearray()
        last_version = versions[-1] if count else -1
        last_time = timestamps[-1] if count else 0
        offset = self._written + mark
        step = RECORD_HEADER.size + self._sig_size
        chains = self._chains
        prev_chain = bytes(chains[-CHAIN_SIZE:]) if chains else NO_CHAIN
        try:
            for version, timestamp, body in records:
                if not (
                    type(version) is int
                    and last_version < version <= MAX_U64
                    and type(timestamp) is int
                    and last_time <= timestamp <= MAX_U64
                    and type(body) is bytes
                    and len(body) <= MAX_U32
                ):
                    body = _checked_record(version, timestamp, body, last_version, last_time)
                length = len(body)
                vt = pack_vt(version, timestamp)
                crc = crc32(body, crc32(vt))
                if key is not None:
                    prev_chain = _chain(prev_chain, vt, body)
                    signature = key.sign(DOMAIN + prev_chain)
                    buf += pack_head(length, version, timestamp, crc32(signature, crc))
                    buf += body
                    buf += signature
                    new_chains += prev_chain
                else:
                    buf += pack_head(length, version, timestamp, crc)
                    buf += body
                add_version(version)
                add_time(timestamp)
                add_offset(offset)
                offset += step + length
                last_version = version
                last_time = timestamp
        except BaseException:
            del buf[mark:]
            del versions[count:]
            del timestamps[count:]
            del offsets[count:]
            raise
        if chains is not None:
            chains += new_chains
        if len(buf) >= _SPILL_SIZE:
            self._write_out(fd)  # bound the memory; durable only at the next flush

    def flush(self) -> int:
        """Write the buffered records in one ``write`` and ``fsync`` the file (unless opened
        with ``fsync=False``); return the last durable version (-1 when empty)."""
        fd = self._require_open()
        if self._durable_count == len(self._versions):
            return self.durable_version
        self._write_out(fd)
        if self._fsync:
            self._sync(fd)
        self._durable_count = len(self._versions)
        return self.durable_version

    def truncate_after(self, version: int) -> None:
        """Drop every record above ``version`` (flushed or not), shrink the file and fsync
        it (unless opened with ``fsync=False``); what stays is durable. Used when a restarted
        node trims what the group never committed."""
        fd = self._require_open()
        keep = bisect.bisect_right(self._versions, version)
        if keep == len(self._versions):
            return
        self._write_out(fd)
        cut = self._offsets[keep]
        os.ftruncate(fd, cut)
        if self._fsync:
            self._sync(fd)
        del self._versions[keep:]
        del self._timestamps[keep:]
        del self._offsets[keep:]
        if self._chains is not None:
            del self._chains[keep * CHAIN_SIZE :]
        if self._ckpt_version > version:  # it holds records cut now: never to be used
            log_checkpoint.remove(self._ckpt_path)
            self._ckpt_version = -1
        if self.checkpoint is not None and self.checkpoint.version > version:
            self.checkpoint = None
        if self._crc_end > cut:
            self._crc_end, self._crc = self._header_size, 0
        self._written = cut
        self._generation += 1
        self._durable_count = keep  # everything left was just written (and fsynced)

    def take_checkpoint(self) -> LogCheckpoint | None:
        """The checkpoint found valid on open (see ``runtime.drivers.log_checkpoint``), handed
        over once: its payload is the owner's state after its version, and the log still
        holds exactly the records it was made from. None if there was none, it did not match
        the log, or the log was cut below it since."""
        found, self.checkpoint = self.checkpoint, None
        return found

    def write_checkpoint(self, version: int, payload: bytes) -> None:
        """Write a checkpoint at ``version`` (a version in the log, already written to the
        file: call after :meth:`flush`) with ``payload``, the owner's state after exactly the
        records up to it. Replaces the previous checkpoint; not fsync'd (see
        ``runtime.drivers.log_checkpoint``). KeyError if ``version`` is not in the log."""
        fd = self._require_open()
        i = bisect.bisect_left(self._versions, version)
        if i == len(self._versions) or self._versions[i] != version:
            raise KeyError(version)
        count = i + 1
        if count < len(self._versions):
            end = self._offsets[count]
        else:
            length = RECORD_HEADER.unpack(self._read_range(self._offsets[i], RECORD_HEADER.size))[0]
            end = self._offsets[i] + RECORD_HEADER.size + length + self._sig_size
        if end > self._written:
            raise LogError(f"{self.path}: a checkpoint at version {version} needs its records written first")
        if self._crc_end > end:
            self._crc_end, self._crc = self._header_size, 0
        crc = log_checkpoint.crc_range(fd, self._crc_end, end, self._crc)
        if crc is None:
            raise LogCorrupted(f"{self.path} ends before offset {end}: it was cut while open")
        self._crc_end, self._crc = end, crc
        # Views of the index, not copies (megabytes for a long log); the arrays cannot grow
        # while viewed, and nothing appends while the owner holds the log for this.
        versions, timestamps, offsets = views = [
            memoryview(a)[:count] for a in (self._versions, self._timestamps, self._offsets)
        ]
        try:
            chains = memoryview(self._chains)[: count * CHAIN_SIZE] if self._chains is not None else None
            try:
                data = log_checkpoint.parts(version, end, crc, versions, timestamps, offsets, chains, payload)
                log_checkpoint.write(self._ckpt_path, data)
            finally:
                if chains is not None:
                    chains.release()
        finally:
            for view in views:
                view.release()
        self._ckpt_version = version

    def close(self, flush: bool = True) -> None:
        """Flush (unless ``flush`` is False: after a failed write, nothing more is tried),
        then close the file. Closing twice is harmless."""
        if self._fd is None:
            return
        try:
            if flush:
                self.flush()
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> VersionedLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._versions)

    @property
    def last_version(self) -> int:
        """The highest version appended (flushed or not), or -1 when the log is empty."""
        return self._versions[-1] if self._versions else -1

    @property
    def first_version(self) -> int:
        """The lowest version in the log, or -1 when the log is empty."""
        return self._versions[0] if self._versions else -1

    @property
    def durable_version(self) -> int:
        """The highest version made durable by :meth:`flush` (or found on open), or -1."""
        return self._versions[self._durable_count - 1] if self._durable_count else -1

    @property
    def public_key(self) -> bytes | None:
        """The raw public key of a signed log, else None."""
        return self._public_key

    # -- reading -------------------------------------------------------------------------

    def read(self, version: int) -> bytes:
        """The body of exactly ``version``; KeyError if the log holds no such version."""
        i = bisect.bisect_left(self._versions, version)
        if i == len(self._versions) or self._versions[i] != version:
            raise KeyError(version)
        return self._record(i)[2]

    def signature(self, version: int) -> bytes:
        """Our signature of exactly ``version`` (signed logs; LogError otherwise); KeyError if
        absent. This is what a peer checks against its own log with :meth:`verify_peer` and
        our public key; with per-node keys, replicas' signatures differ even when their logs
        are equal, so compare them that way, not by equality."""
        i = self._signed_index(version)
        _, _, body = self._record(i)  # checks the crc
        start = self._offsets[i] + RECORD_HEADER.size + len(body)
        return bytes(self._read_range(start, SIGNATURE_SIZE))

    def chain_digest(self, version: int) -> bytes:
        """The chain digest of exactly ``version`` (signed logs; LogError otherwise); KeyError
        if absent. Equal on every replica whose log equals ours up to ``version``."""
        i = self._signed_index(version)
        assert self._chains is not None
        return bytes(self._chains[i * CHAIN_SIZE : (i + 1) * CHAIN_SIZE])

    def verify_peer(self, version: int, signature: bytes, public_key: bytes) -> bool:
        """Whether ``signature`` is a valid signature, by ``public_key`` (32 raw bytes), of
        our own chain digest at ``version``: i.e. whether the holder of that key signed a log
        whose records up to ``version`` are exactly ours (see the module docstring). False
        for a bad signature, a version we do not hold (unflushed ones count as held), or a
        malformed key or signature: these come from peers, so they never raise. The caller
        must know the key is the peer's (from its TLS certificate). LogError only when this
        log is not signed."""
        if not self.signed:
            raise LogError(f"{self.path} is not signed; it cannot check a peer's signature")
        try:
            i = self._signed_index(version)
            peer = Ed25519PublicKey.from_public_bytes(bytes(public_key))
            if len(signature) != SIGNATURE_SIZE:
                return False
            assert self._chains is not None
            chain = bytes(self._chains[i * CHAIN_SIZE : (i + 1) * CHAIN_SIZE])
            peer.verify(bytes(signature), DOMAIN + chain)
        except (KeyError, InvalidSignature, ValueError, TypeError):
            return False
        return True

    def latest_at_or_before_version(self, version: int) -> tuple[int, int, bytes] | None:
        """The record with the highest version <= ``version``, or None."""
        i = bisect.bisect_right(self._versions, version)
        return self._record(i - 1) if i else None

    def latest_at_or_before_time(self, timestamp_ns: int) -> tuple[int, int, bytes] | None:
        """The last record whose timestamp is <= ``timestamp_ns``, or None."""
        i = bisect.bisect_right(self._timestamps, timestamp_ns)
        return self._record(i - 1) if i else None

    def iter_from(self, after_version: int = -1) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(version, timestamp_ns, body)`` for every record above ``after_version``,
        in order, reading the file a megabyte at a time (the log is never loaded whole).
        Records appended while iterating are included; truncating stops the iterator with
        LogError."""
        self._require_open()
        i = bisect.bisect_right(self._versions, after_version)
        generation = self._generation
        window: _Window | None = None
        while i < len(self._versions):
            if generation != self._generation:
                raise LogError(f"{self.path} was truncated while being iterated; start again")
            fd = self._require_open()
            offset = self._offsets[i]
            if offset >= self._written:
                yield self._record(i)
            else:
                if window is None or window.end != self._written:
                    window = _Window(fd, self._written)
                yield self._decode_at(i, window.get(offset, RECORD_HEADER.size), window.get)
            i += 1

    def iter_batches(
        self, after_version: int = -1, max_bytes: int = _READ_CHUNK
    ) -> Iterator[list[tuple[int, int, bytes]]]:
        """Like :meth:`iter_from`, a list of records at a time: each list holds the records of
        about ``max_bytes`` of the file (at least one), read with one ``pread`` and checked as
        :meth:`iter_from` checks them (the index, the crc). Replaying a long log this way
        costs a tight loop per record rather than a generator step and two window reads."""
        self._require_open()
        i = bisect.bisect_right(self._versions, after_version)
        generation = self._generation
        versions, offsets = self._versions, self._offsets
        sig = self._sig_size
        unpack_from = RECORD_HEADER.unpack_from
        head_size = RECORD_HEADER.size
        crc32 = zlib.crc32
        while i < len(versions):
            if generation != self._generation:
                raise LogError(f"{self.path} was truncated while being iterated; start again")
            fd = self._require_open()
            start = offsets[i]
            if start >= self._written:  # not handed to the file yet: from the buffer
                yield [self._record(i)]
                i += 1
                continue
            # Records wholly before ``_written`` are in the file (the buffer is written whole).
            j = max(i + 1, bisect.bisect_left(offsets, min(start + max_bytes, self._written), i + 1))
            end = offsets[j] if j < len(versions) else self._written
            data = _read_exact(fd, start, end - start)
            if len(data) != end - start:
                raise LogCorrupted(
                    f"{self.path}: records {i} to {j - 1} at offset {start} are cut short on disk since the "
                    "log was opened; stop the node and run `derecho-actors verify`"
                )
            out: list[tuple[int, int, bytes]] = []
            pos = 0
            for k in range(i, j):
                length, version, timestamp, crc = unpack_from(data, pos)
                body_at = pos + head_size
                pos = body_at + length + sig
                rest = data[body_at:pos]
                if (
                    version != versions[k]
                    or len(rest) != length + sig
                    or crc32(rest, crc32(data[body_at - 20 : body_at - 4])) != crc
                ):
                    raise LogCorrupted(
                        f"{self.path}: record {k} (version {versions[k]}) at offset {offsets[k]} changed "
                        "on disk since the log was opened; stop the node and run `derecho-actors verify`"
                    )
                out.append((version, timestamp, rest[:length] if sig else rest))
            i = j
            yield out

    # -- internals -----------------------------------------------------------------------

    def _signed_index(self, version: int) -> int:
        """The index of exactly ``version`` in a signed log; LogError if the log is not
        signed, KeyError if the version is absent (or not an int)."""
        if not self.signed:
            raise LogError(f"{self.path} is not signed")
        if not isinstance(version, int) or isinstance(version, bool):
            raise KeyError(version)
        i = bisect.bisect_left(self._versions, version)
        if i == len(self._versions) or self._versions[i] != version:
            raise KeyError(version)
        return i

    def _require_open(self) -> int:
        if self._fd is None:
            raise LogError(f"{self.path} is closed; open it again with VersionedLog.open")
        return self._fd

    def _sync(self, fd: int) -> None:
        """fsync, or close the log: after a failed fsync the kernel may have dropped the
        unwritten pages and a second fsync can succeed without them, so only reopening (which
        reads back what the disk really holds) is safe."""
        try:
            os.fsync(fd)
        except OSError as exc:
            self._fd = None
            os.close(fd)
            raise LogError(
                f"fsync of {self.path} failed ({exc.strerror or exc}); records after version "
                f"{self.durable_version} may be lost: the log is closed, open it again to recover"
            ) from exc

    def _write_out(self, fd: int) -> None:
        if self._buf:
            _write_all(fd, self._buf, self._written)
            self._written += len(self._buf)
            self._buf = bytearray()

    def _read_range(self, offset: int, size: int) -> bytes:
        if offset >= self._written:
            rel = offset - self._written
            return bytes(self._buf[rel : rel + size])
        return _read_exact(self._require_open(), offset, size)

    def _record(self, i: int) -> tuple[int, int, bytes]:
        offset = self._offsets[i]
        return self._decode_at(i, self._read_range(offset, RECORD_HEADER.size), self._read_range)

    def _decode_at(self, i: int, head: bytes, read: Callable[[int, int], bytes]) -> tuple[int, int, bytes]:
        offset = self._offsets[i]
        length, version, timestamp, crc = RECORD_HEADER.unpack(head)
        rest = read(offset + RECORD_HEADER.size, length + self._sig_size)
        if (
            version != self._versions[i]
            or len(rest) != length + self._sig_size
            or zlib.crc32(rest, zlib.crc32(head[4:20])) != crc
        ):
            raise LogCorrupted(
                f"{self.path}: record {i} (version {self._versions[i]}) at offset {offset} changed "
                "on disk since the log was opened; stop the node and run `derecho-actors verify`"
            )
        return version, timestamp, bytes(rest[:length])


def _check_key(path: Path, header: _Header, wanted: bytes | None) -> None:
    if header.signed and wanted is None:
        raise LogSignatureError(
            f"{path} is a signed log; open it with its signing key "
            f"(public key {header.public_key.hex() if header.public_key else '?'})"
        )
    if header.signed and wanted != header.public_key:
        raise LogSignatureError(
            f"{path} was signed with public key {header.public_key.hex() if header.public_key else '?'}, "
            f"not with the given key (public key {wanted.hex() if wanted else '?'}); "
            "use the key the log was created with"
        )
    if not header.signed and wanted is not None:
        raise LogSignatureError(
            f"{path} is an unsigned log but a signing key was given; open it without a key, "
            "or start a new signed log in an empty data_dir"
        )


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - some platforms cannot open folders
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _usable_checkpoint(fd: int, path: Path, header: _Header, size: int) -> CheckpointFile | None:
    """The log's checkpoint if the log still holds exactly the records it was made from
    (its prefix crc over the file matches); otherwise None, and an unusable checkpoint file
    is removed (the next one replaces it anyway)."""
    ckpt = log_checkpoint.checkpoint_path(path)
    found = log_checkpoint.read(ckpt)
    if found is None:
        return None
    why = found if isinstance(found, str) else None
    if isinstance(found, CheckpointFile):
        if found.signed != header.signed:
            why = "signed differently from the log"
        elif found.end > size or log_checkpoint.crc_range(fd, header.size, found.end) != found.prefix_crc:
            why = f"the log no longer holds the records up to version {found.version} it was made from"
    if why is None:
        assert isinstance(found, CheckpointFile)
        return found
    log.info("log %s: checkpoint not used (%s); every record is read", path, why)
    log_checkpoint.remove(ckpt)
    return None


def _indexes(scan: _ScanResult, found: CheckpointFile) -> bool:
    """Whether a scan indexed the checkpoint's records as the checkpoint does."""
    n = found.count
    if len(scan.versions) < n or scan.versions[n - 1] != found.version:
        return False
    return (scan.offsets[n] if len(scan.offsets) > n else scan.end) == found.end


def _recover(fd: int, path: Path, scan: _ScanResult, size: int) -> Recovery:
    """Cut the file after its valid prefix, keeping a copy of anything but a torn tail."""
    bad = scan.bad
    assert bad is not None
    dropped = size - scan.end
    copy: Path | None = None
    if bad.reason != TORN:
        copy = _copy_aside(fd, path, scan.end, size)
    os.ftruncate(fd, scan.end)
    os.fsync(fd)
    kept = len(scan.versions)
    versions = f"versions {scan.versions[0]}..{scan.versions[-1]}" if kept else "no versions"
    log.warning(
        "log %s: dropped %d bytes from %s: kept %d records (%s)%s",
        path,
        dropped,
        bad.describe(),
        kept,
        versions,
        f"; the dropped bytes are saved in {copy}" if copy else " (the tail of an interrupted write)",
    )
    return Recovery(kept, dropped, kept, bad.offset, bad.version, bad.reason, copy)


def _copy_aside(fd: int, path: Path, start: int, end: int) -> Path:
    n = 1
    while True:
        target = Path(f"{path}.damaged-{n}")
        try:
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            n += 1
    try:
        pos = start
        while pos < end:
            data = _read_exact(fd, pos, min(_READ_CHUNK, end - pos))
            if not data:
                break
            _write_all(out, data, pos - start)
            pos += len(data)
        os.fsync(out)
    finally:
        os.close(out)
    _fsync_dir(path.parent)
    return target


# ----------------------------------------------------------------------------------------
# Offline checks


def verify(path: str | os.PathLike[str], public_key: bytes | None = None) -> VerifyReport:
    """Check a log without changing it: the header, then every record's length, crc, version
    order and (when signed) signature over the recomputed chain digest. With ``public_key``
    the log must be signed by that key; without, a signed log is checked against the key in
    its own header (which proves the records are intact and in order, not who wrote them).
    An unsigned format-1 log is checked as it is (not upgraded); a signed one is reported
    bad (``OLD_SIGNED``), since its group-key signatures cannot be checked here."""
    target = Path(path)
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        unreadable = BadRecord(None, 0, None, f"unreadable: {exc.strerror or exc}")
        return VerifyReport(target, False, 0, False, unreadable)
    try:
        size = os.fstat(fd).st_size
        try:
            header = _decode_header(_read_exact(fd, 0, FILE_HEADER.size + PUBLIC_KEY_SIZE), target)
        except LogCorrupted:
            return VerifyReport(target, False, 0, False, BadRecord(None, 0, None, BAD_HEADER))
        except LogError:
            return VerifyReport(target, False, 0, False, BadRecord(None, 0, None, UNSUPPORTED))
        if header.format == OLD_FORMAT_VERSION and header.signed:
            return VerifyReport(target, False, 0, True, BadRecord(None, 0, None, OLD_SIGNED))
        if public_key is not None:
            if not header.signed:
                return VerifyReport(target, False, 0, False, BadRecord(None, 0, None, NOT_SIGNED))
            if bytes(public_key) != header.public_key:
                wrong = BadRecord(None, FILE_HEADER.size, None, WRONG_KEY)
                return VerifyReport(target, False, 0, True, wrong)
        verifier = Ed25519PublicKey.from_public_bytes(header.public_key) if header.public_key else None
        scan = _scan(fd, header, size, verifier)
        return VerifyReport(target, scan.bad is None, len(scan.versions), header.signed, scan.bad)
    finally:
        os.close(fd)


def verify_dir(data_dir: str | os.PathLike[str], public_key: bytes | None = None) -> list[VerifyReport]:
    """:func:`verify` every ``*.log`` file under ``data_dir`` (at any depth), in path order."""
    return [verify(p, public_key) for p in sorted(Path(data_dir).rglob("*.log")) if p.is_file()]

"""Making and mapping a shared-memory segment file: the one place both kinds of segment (a ring,
``shm_ring``; a row board, ``shm_board``) get their file, so the rules a peer's file must pass
are written once.

The owner creates the file with ``O_EXCL`` (never an existing one), mode 0600 whatever the
umask, at its final size, and maps it. The peer opens it without following a symbolic link and
maps it only if it is a regular file of its own user, mode 0600, of the size announced over TLS;
each caller then checks its header (magic, geometry, the token told over TLS), which says the
file is the segment that peer made and not one someone else put under that name.
"""

from __future__ import annotations

import mmap
import os
import stat


class RingError(Exception):
    """A segment that is not what it should be (owner, mode, size, header, token)."""


def create_segment(path: str, size: int) -> mmap.mmap:
    """Create ``path`` (which must not exist), mode 0600, ``size`` bytes, its pages allocated,
    mapped read-write; on failure (``OSError``, ENOSPC when /dev/shm is full) nothing is left
    behind.

    Allocated now (``posix_fallocate``, ~1 ms for a 4 MiB ring), not at first touch: a sparse
    segment's page is taken from /dev/shm when a write first reaches it, and if /dev/shm has
    filled meanwhile (other processes' segments, objects' segments) that write kills the
    process with SIGBUS. Failing here, the pair stays on TCP instead."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask did
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def attach_segment(path: str, size: int, what: str, *, writable: bool) -> mmap.mmap:
    """Map the peer's segment at ``path`` (``writable``: read-write, else read-only); raise
    ``RingError`` unless it is a regular file of our own user, mode 0600, of ``size`` bytes
    (``what`` names the segment in that error)."""
    # O_NONBLOCK: a FIFO (or a device) at a valid name must not block the loop in open().
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise RingError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RingError(f"{path} is not a regular file")
        if st.st_uid != os.getuid():
            raise RingError(f"{path} belongs to uid {st.st_uid}, not ours ({os.getuid()})")
        if st.st_mode & 0o077:
            raise RingError(f"{path} has mode {stat.S_IMODE(st.st_mode):o}, not 600")
        if st.st_size != size:
            raise RingError(f"{path} has {st.st_size} bytes, not {what}")
        try:
            return mmap.mmap(fd, size, prot=mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
        except OSError as exc:  # no address space or map count left: refused as any bad segment
            raise RingError(f"cannot map {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def token_words(token: bytes) -> tuple[int, int]:
    """A segment's 16-byte token as the two header words that hold it."""
    if len(token) != 16:
        raise RingError("a segment token is 16 bytes")
    return int.from_bytes(token[:8], "little"), int.from_bytes(token[8:], "little")

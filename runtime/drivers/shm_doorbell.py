"""A wake-up between two unrelated processes of one user: a named FIFO, rung with one byte.

Why a FIFO and not an ``eventfd``: an eventfd has no name, so the other process could only get
it passed over a unix socket (``SCM_RIGHTS``), which needs a second listening socket per node,
its own authentication (tying the unix connection to the TLS-proven node id) and its own
cleanup. A FIFO is a name in /dev/shm like the ring's segment: its owner creates it with mode
0600 next to the segment, tells the peer its path over the TLS control connection, and both
open it ``O_RDWR | O_NONBLOCK`` (Linux defines that for FIFOs): neither open blocks, and the
reader never sees end-of-file when the writer dies (it holds a write end itself). The reader
registers it with ``loop.add_reader`` and drains it when woken; a ring into a full pipe means
a wake-up is already pending, so ``ring`` never blocks and never fails. Costs the same as an
eventfd: one ``write`` to wake, one ``read`` to drain, and only when the other side said it
may sleep (see ``runtime.drivers.shm_ring``).
"""

from __future__ import annotations

import os
import stat

from runtime.drivers.shm_ring import RingError


class Doorbell:
    """One end of a named FIFO (either side may ring or wait on it)."""

    __slots__ = ("path", "fd")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def create(cls, path: str) -> Doorbell:
        """Make the FIFO (which must not exist), mode 0600, and open it."""
        os.mkfifo(path, 0o600)
        try:
            return cls.open(path)
        except BaseException:
            os.unlink(path)
            raise

    @classmethod
    def open(cls, path: str) -> Doorbell:
        """Open an existing FIFO of our own user with mode 0600 (``RingError`` otherwise)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise RingError(f"cannot open {path}: {exc.strerror or exc}") from None
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISFIFO(st.st_mode):
            problem = "is not a FIFO"
        elif st.st_uid != os.getuid():
            problem = f"belongs to uid {st.st_uid}, not ours"
        elif st.st_mode & 0o077:
            problem = f"has mode {stat.S_IMODE(st.st_mode):o}, not 600"
        if problem is not None:
            os.close(fd)
            raise RingError(f"{path} {problem}")
        return cls(path, fd)

    def ring(self) -> None:
        """Wake whoever waits on this FIFO (never blocks: a full pipe is a pending wake-up)."""
        try:
            os.write(self.fd, b"\x01")
        except (BlockingIOError, OSError):
            pass

    def drain(self) -> None:
        """Take every pending wake-up."""
        try:
            while len(os.read(self.fd, 4096)) == 4096:
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

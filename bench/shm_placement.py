"""What a block of a large object costs per MB, one node at a time, for the ways shared memory
could move it (issue 23): the numbers that decide whether "the sender writes the object once
into a segment the receivers map" is worth building.

``python -m bench.shm_placement [--mib 96] [--reps 7]`` prints the median CPU time per MB
(``time.process_time``, so a busy machine inflates it less than wall time) of:

Receiver side (every block is hashed as the core does, 1 MiB updates):

* ``copy into fresh buffer + hash``: today's receiver of a first object: a block copied from
  the ring into an anonymous mapping pre-faulted block by block (``MADV_POPULATE_WRITE``);
* ``copy into reused buffer + hash``: today's steady state (the receive-buffer pool hands out
  a mapping whose pages are mapped already);
* ``remap shared file + hash``: the alternative: the block's pages of the sender's segment
  (a /dev/shm file) mapped over the buffer's range (``MAP_FIXED | MAP_PRIVATE``, through
  libc's ``mmap``: Python's module cannot map at an address), then
  ``MADV_POPULATE_READ``; no byte copied, no page allocated;
* ``hash only``: the floor every receiver pays whatever the transport.

Sender (origin) side: placing the object into a segment, per MB: into a fresh /dev/shm file
(``pwrite``: pages allocated and filled), into one reused (pages exist), and the copy of a
block into a warm 4 MiB buffer, which is what writing a block into a ring costs (per link).

Measured here (2026-12-07, 2 cores shared with other work, 96 MiB, medians of 9, three
runs): remapping costs a receiver what copying into a reused buffer does (0.28 against
0.28-0.30 ms/MB, of which hashing 0.20: mapping and populating 1 MiB of pages costs about what
copying it does), and saves 0.28 against a fresh buffer (0.56), which the receive-buffer pool
already avoids from the third object on. A sender placing the object into a fresh segment pays
0.38-0.41 ms/MB (0.25 into a reused one) against 0.12 per link for a ring. With three members
that is about what the receivers save (a relay's ring copy, first objects' fresh pages): the
design pays only with segments the sender reuses, which needs every receiver to say when it
let go of its mapping (a cross-process release the engine's buffer pool would have to report),
or with many receivers per sender.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable

from blake3 import blake3

BLOCK = 1 << 20
MB = 1_000_000
_MAP_FIXED = 0x10  # Linux
_MADV_POPULATE_READ = 22  # Linux 5.14+
_MADV_POPULATE_WRITE = 23


def _libc_mmap() -> Callable[[int, int, int, int, int, int], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.mmap
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    return fn  # type: ignore[no-any-return]


class Segment:
    """A /dev/shm file of ``size`` bytes holding ``data`` (mode 0600, a random name, removed
    on close): what a sender's per-object segment would be."""

    def __init__(self, data: bytes, directory: str = "/dev/shm") -> None:
        self.path = os.path.join(directory, f"derecho-bench-placement-p{os.getpid()}-{secrets.token_hex(8)}")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.pwrite(self.fd, data, 0)

    def close(self) -> None:
        os.close(self.fd)
        os.unlink(self.path)


def receive_copy(ring: bytearray, blocks: int, reused: mmap.mmap | None) -> float:
    """CPU seconds to copy ``blocks`` blocks from ``ring`` into a buffer and hash them."""
    buf = reused if reused is not None else mmap.mmap(-1, blocks * BLOCK, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view, src, h = memoryview(buf), memoryview(ring), blake3()
    slots = len(ring) // BLOCK
    t = time.process_time()
    for b in range(blocks):
        if reused is None:
            buf.madvise(_MADV_POPULATE_WRITE, b * BLOCK, BLOCK)
        s = b % slots
        view[b * BLOCK : (b + 1) * BLOCK] = src[s * BLOCK : (s + 1) * BLOCK]
        h.update(view[b * BLOCK : (b + 1) * BLOCK])
    spent = time.process_time() - t
    view.release()
    src.release()
    if reused is None:
        buf.close()
    return spent


def receive_remap(segment: Segment, blocks: int, expect: bytes) -> float:
    """CPU seconds to map ``blocks`` blocks of ``segment`` over a fresh buffer and hash them."""
    libc_mmap = _libc_mmap()
    buf = mmap.mmap(-1, blocks * BLOCK, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    view, h = memoryview(buf), blake3()
    t = time.process_time()
    for b in range(blocks):
        at = base + b * BLOCK
        got = libc_mmap(
            at, BLOCK, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | _MAP_FIXED, segment.fd, b * BLOCK
        )
        if got != at:
            raise OSError(ctypes.get_errno(), "mmap(MAP_FIXED) failed")
        buf.madvise(_MADV_POPULATE_READ, b * BLOCK, BLOCK)
        h.update(view[b * BLOCK : (b + 1) * BLOCK])
    spent = time.process_time() - t
    if h.digest() != expect:
        raise AssertionError("the remapped buffer does not hold the segment's bytes")
    view.release()
    buf.close()
    return spent


def place(data: bytes, fresh_dir: str, reuse: Segment | None) -> float:
    """CPU seconds for a sender to write ``data`` block by block into a fresh segment (or
    ``reuse``, whose pages exist)."""
    segment = reuse
    fd = reuse.fd if reuse is not None else -1
    path = ""
    if reuse is None:
        path = os.path.join(fresh_dir, f"derecho-bench-placement-p{os.getpid()}-{secrets.token_hex(8)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    src = memoryview(data)
    try:
        t = time.process_time()
        for off in range(0, len(data), BLOCK):
            os.pwrite(fd, src[off : off + BLOCK], off)
        return time.process_time() - t
    finally:
        src.release()
        if segment is None:
            os.close(fd)
            os.unlink(path)


def ring_copy(data: bytes, ring: bytearray) -> float:
    """CPU seconds to copy ``data`` block by block into a warm ring-sized buffer (one link)."""
    src, dst = memoryview(data), memoryview(ring)
    slots = len(ring) // BLOCK
    t = time.process_time()
    for i, off in enumerate(range(0, len(data), BLOCK)):
        s = i % slots
        dst[s * BLOCK : (s + 1) * BLOCK] = src[off : off + BLOCK]
    spent = time.process_time() - t
    src.release()
    dst.release()
    return spent


def measure(mib: int, reps: int, directory: str = "/dev/shm") -> dict[str, float]:
    """Median CPU ms per MB of every case, ``reps`` interleaved repetitions."""
    data = bytes(range(256)) * (mib * BLOCK // 256)
    ring = bytearray(data[: 4 * BLOCK])
    expect = blake3(data).digest()
    segment = Segment(data, directory)
    pooled = mmap.mmap(-1, mib * BLOCK, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    receive_copy(ring, mib, None)  # warm the code paths
    samples: dict[str, list[float]] = {}
    try:
        receive_copy(ring, mib, pooled)  # its pages mapped, as a reused buffer's are
        for _ in range(reps):
            cases: dict[str, Callable[[], float]] = {
                "receiver: copy into fresh buffer + hash": lambda: receive_copy(ring, mib, None),
                "receiver: copy into reused buffer + hash": lambda: receive_copy(ring, mib, pooled),
                "receiver: remap shared file + hash": lambda: receive_remap(segment, mib, expect),
                "receiver: hash only": lambda: _hash_only(data),
                "sender: place into fresh segment": lambda: place(data, directory, None),
                "sender: place into reused segment": lambda: place(data, directory, segment),
                "sender: copy into a ring (per link)": lambda: ring_copy(data, ring),
            }
            for name, fn in cases.items():
                samples.setdefault(name, []).append(fn())
    finally:
        pooled.close()
        segment.close()
    size_mb = mib * BLOCK / MB
    return {name: statistics.median(v) * 1000 / size_mb for name, v in samples.items()}


def _hash_only(data: bytes) -> float:
    t = time.process_time()
    h = blake3()
    view = memoryview(data)
    for off in range(0, len(data), BLOCK):
        h.update(view[off : off + BLOCK])
    view.release()
    return time.process_time() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.shm_placement", description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=96, help="object size in MiB (blocks of 1 MiB)")
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args(argv)
    if sys.platform != "linux" or not os.path.isdir("/dev/shm"):
        print("Linux with /dev/shm only")
        return 2
    for name, ms in measure(a.mib, a.reps).items():
        print(f"{name:44s} {ms:.3f} ms/MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ring and row-board segments (runtime.drivers.shm_segment) get all their pages when they are
made: a sparse one took a page at its first write there, and with /dev/shm full by then (other
processes' segments, objects' segments) that write killed the process with SIGBUS. Made when
there is no room, nothing is left and the caller gets an OSError (the pair stays on TCP)."""

from __future__ import annotations

import errno
import os
import secrets

import pytest

from runtime.drivers.shm_board import BOARD_SIZE, RowBoard
from runtime.drivers.shm_ring import HEADER, ShmRing
from runtime.drivers.shm_segment import create_segment

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host"),
]


def _allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def test_a_ring_and_a_board_have_every_page_when_made(shm_dir: str) -> None:
    token = secrets.token_bytes(16)
    capacity = 1 << 20
    ring = ShmRing.create(os.path.join(shm_dir, "r.ring"), capacity, token)
    board = RowBoard.create(os.path.join(shm_dir, "r.rows"), token)
    assert _allocated(os.path.join(shm_dir, "r.ring")) >= HEADER + capacity
    assert _allocated(os.path.join(shm_dir, "r.rows")) >= BOARD_SIZE
    ring.close()
    board.close()


def test_no_room_for_a_segment_is_an_oserror_and_leaves_no_file(shm_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    path = os.path.join(shm_dir, "r.ring")
    with pytest.raises(OSError) as got:
        create_segment(path, 1 << 20)
    assert got.value.errno == errno.ENOSPC
    assert os.listdir(shm_dir) == []

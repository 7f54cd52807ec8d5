"""The node's data directory: checked once at start, so a disk problem is a clear line at
start-up (exit 2) rather than an error inside a callback after the node joined."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from runtime.errors import ConfigError


def check_data_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and prove that files can be created, written, fsync'd and
    removed in it. Raises ConfigError naming the whole path and the problem."""
    folder = Path(path).absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"node.data_dir: cannot create {folder}: {exc.strerror or exc}") from None
    if not folder.is_dir():
        raise ConfigError(f"node.data_dir: {folder} is not a directory")
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"derecho")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        hint = {
            errno.EROFS: "the file system is read-only",
            errno.ENOSPC: "the disk is full",
            errno.EACCES: "permission denied",
            errno.EDQUOT: "the disk quota is exhausted",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
        raise ConfigError(f"node.data_dir: cannot write in {folder}: {hint}") from None
    return folder

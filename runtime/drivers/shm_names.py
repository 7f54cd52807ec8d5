"""Where a node's shared-memory rings live, what they are called, and who may remove them.

Every ring is four files in /dev/shm made by its owner (the producer), mode 0600:
``<base>.ring`` (the segment), ``<base>.data`` and ``<base>.room`` (its doorbells: data
arrived, room freed) and ``<base>.rows`` (the owner's SST rows as the peer reads them,
``shm_rows``). The base is ``derecho-<cluster>-n<owner>-to<peer>-p<pid>-<random>``:
named per group and node, so a start of node ``n`` finds what a previous process of ``n`` left
behind (kill -9 runs no cleanup) and removes it; with the owner's pid, so two clusters of the
same name on one host (parallel test runs) never remove each other's live rings; with 64
random bits, so nobody can create the name before the owner does (``O_EXCL`` would then fail
the setup, not hand the peer an impostor's file). The names live only through setup: once the
peer has opened all four, the owner unlinks them (the mappings and open FIFOs live on until
both close), so a killed process leaves nothing behind unless it died mid-setup, and then its
next start removes what it left. A peer only opens and maps; it never
removes a file (CPython's ``multiprocessing.shared_memory`` before 3.13 lets the resource
tracker of any process that attached unlink the segment at exit, which is why it is not used).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass

log = logging.getLogger("derecho.shm")

SHM_DIR = "/dev/shm"
SUFFIXES = (".ring", ".data", ".room", ".rows")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def _cluster_part(cluster: str) -> str:
    return _UNSAFE.sub("_", cluster)[:40] or "_"


def node_prefix(cluster: str, owner: int) -> str:
    """The file-name prefix of every ring ``owner`` makes in ``cluster``."""
    return f"derecho-{_cluster_part(cluster)}-n{owner}-"


@dataclass(frozen=True, slots=True)
class RingNames:
    """The paths of one ring's files."""

    base: str

    @property
    def ring(self) -> str:
        return self.base + ".ring"

    @property
    def data(self) -> str:
        return self.base + ".data"

    @property
    def room(self) -> str:
        return self.base + ".room"

    @property
    def rows(self) -> str:
        return self.base + ".rows"

    def remove(self) -> None:
        """Unlink the files (the owner's job only); missing ones are fine."""
        for path in (self.ring, self.data, self.room, self.rows):
            unlink_quietly(path)


def unlink_quietly(path: str) -> None:
    """Unlink ``path``; a missing file is fine, another failure a WARNING (never raised: the
    owner removes its files on paths, close included, where nothing could act on an error)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


def new_names(cluster: str, owner: int, peer: int, directory: str = SHM_DIR) -> RingNames:
    """Fresh names for the ring ``owner`` sends ``peer`` through."""
    name = f"{node_prefix(cluster, owner)}to{peer}-p{os.getpid()}-{secrets.token_hex(8)}"
    return RingNames(os.path.join(directory, name))


def offered_names(base: str, cluster: str, owner: int, me: int, directory: str = SHM_DIR) -> RingNames | None:
    """``base`` as a peer offered it, if it names a ring that ``owner`` made for ``me`` in
    this cluster, in ``directory`` (None: refuse it; a peer cannot make us open any other file)."""
    want = re.escape(f"{node_prefix(cluster, owner)}to{me}-p") + r"[0-9]+-[0-9a-f]{16}"
    head, name = os.path.split(base)
    if head != directory or re.fullmatch(want, name) is None:
        return None
    return RingNames(base)


def new_object_path(cluster: str, owner: int, directory: str = SHM_DIR) -> str:
    """A fresh path for the segment ``owner`` writes one large object into (``shm_objects``):
    named per group and node as the rings are, so a next start removes what a killed process
    left."""
    return os.path.join(directory, f"{node_prefix(cluster, owner)}obj-p{os.getpid()}-{secrets.token_hex(8)}.obj")


def offered_object_path(path: str, cluster: str, owner: int, directory: str = SHM_DIR) -> str | None:
    """``path`` as a peer offered it, if it names an object segment ``owner`` made in this
    cluster, in ``directory`` (None: refuse it; a peer cannot make us open any other file)."""
    want = re.escape(f"{node_prefix(cluster, owner)}obj-p") + r"[0-9]+-[0-9a-f]{16}\.obj"
    head, name = os.path.split(path)
    if head != directory or re.fullmatch(want, name) is None:
        return None
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(cluster: str, owner: int, directory: str = SHM_DIR) -> int:
    """Remove the files earlier processes of node ``owner`` in ``cluster`` left behind (their
    pid is gone); returns how many. Called at start, before any ring of this process exists."""
    prefix = node_prefix(cluster, owner)
    pattern = re.compile(
        re.escape(prefix)
        + r"(?:to[0-9]+-p([0-9]+)-[0-9a-f]{16}\.(?:ring|data|room|rows)|obj-p([0-9]+)-[0-9a-f]{16}\.obj)"
    )
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    removed = 0
    for name in names:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        pid = int(m.group(1) or m.group(2))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed += 1
        except OSError as exc:
            log.warning("cannot remove stale %s: %s", name, exc)
    if removed:
        log.info("removed %d shared-memory files a previous process of node %s left behind", removed, owner)
    return removed


def host_key() -> str:
    """What two processes must share to use a ring: the machine and its boot, the mount
    namespace (the same /dev/shm) and the network namespace. The last one because a peer in
    another network namespace is, to the operator, on another host: its traffic goes through
    routes and firewalls that can cut it off (the partition test does exactly that), and a
    ring would silently bridge them."""
    parts = []
    for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            with open(path, encoding="ascii") as f:
                parts.append(f.read().strip())
        except OSError:
            parts.append("?")
    for ns in ("mnt", "net"):
        try:
            parts.append(os.readlink(f"/proc/self/ns/{ns}"))
        except OSError:
            parts.append("?")
    return "|".join(parts)

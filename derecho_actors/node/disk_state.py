"""What a node keeps in its data directory besides the logs, for a total restart.

A total restart (``runtime.core.restart``) needs, from every node that comes back, facts that
must have been on disk *before* they could matter:

- ``view.msgpack``: the last view the node installed;
- ``accepted.msgpack``: the highest view change the node accepted, written before its
  acceptance leaves the node (``Ready.accepted``), so a restart never reuses the id of a view
  a majority may have installed;
- ``frontiers.msgpack``: per shard, the highest persistence frontier the node learnt (every
  version up to it was on disk at every replica); written lazily, so it may lag, never lead;
  a restart whose logs end below a recorded frontier has lost persisted versions and stops;
- ``incomplete.msgpack``: shards whose state transfer had started and not landed, written
  before the view that names the shard is saved: such a log vouches for nothing;
- ``lost.msgpack``: per shard, the versions an operator accepted to lose in a restart
  (``--accept-loss``), so reads of them answer ``VersionLost`` rather than ``NotPersistedYet``.

Each file is a msgpack map with ``format``, ``cluster`` and ``node`` besides its data, written
whole to a temporary file, fsync'd and renamed over the old one (then the folder is fsync'd),
so a crash leaves the old or the new content, never a torn one.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import msgpack

from derecho_actors.replica.prebuild import Prebuild
from derecho_actors.replica.store import log_path
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.drivers.restart import SavedState
from runtime.errors import ConfigError, RestartError
from runtime.exitcodes import EXIT_STORAGE

FailStop = Callable[[str, int], None]
"""``fail(why, exit code)``: the node leaves the group (``_stopping.NodeStop.fail_stop``)."""

log = logging.getLogger("derecho.disk")

FORMAT = 1
"""Format of these files; a node refuses a file of another format with one clear line."""

FRONTIER_WRITE_INTERVAL = 0.5  # seconds: frontiers are written at most this often


def _sid(value: Any) -> ShardId:
    name, subgroup, shard = value
    return ShardId(str(name), int(subgroup), int(shard))


class NodeDiskState:
    def __init__(self, data_dir: Path, cluster: str, node_id: int, fsync: bool = True) -> None:
        self.data_dir = data_dir
        self.cluster = cluster
        self.node_id = node_id
        self.fsync = fsync
        self._lock = threading.Lock()
        self._frontiers: dict[ShardId, int] = {}
        self._frontiers_written: dict[ShardId, int] = {}
        self._incomplete: set[ShardId] = set()
        self._accepted = -1
        # Logs :func:`saved_state` opened and checked, kept open for the replica that opens
        # them next (one read of a long log at restart, not two): path -> VersionedLog.
        self._kept: dict[Path, Any] = {}

    # ------------------------------------------------------------------ files
    def _path(self, name: str) -> Path:
        return self.data_dir / f"{name}.msgpack"

    def _write(self, name: str, data: dict[str, Any]) -> None:
        """Replace file ``name`` atomically (tmp, fsync, rename, fsync the folder)."""
        path = self._path(name)
        tmp = path.with_suffix(".tmp")
        body = msgpack.packb(
            {"format": FORMAT, "cluster": self.cluster, "node": self.node_id, **data}, use_bin_type=True
        )
        with self._lock:
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if self.fsync:
                fd = os.open(self.data_dir, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self._path(name)
        if not path.exists():
            return None
        try:
            data = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
        except Exception as exc:
            raise RestartError(f"{path} is unreadable ({exc}); move it aside to start this node as new") from None
        if not isinstance(data, dict):
            raise RestartError(f"{path} is not a {name} file; move it aside to start this node as new")
        fmt = data.get("format", 1)
        if fmt != FORMAT:
            raise RestartError(
                f"{path} has format {fmt!r}; this release reads format {FORMAT}: start this node with the release "
                "that wrote it, or move the file aside to start the node as new (it then fetches its state)"
            )
        if data.get("cluster") != self.cluster or data.get("node") != self.node_id:
            raise RestartError(
                f"{self.data_dir} holds the state of node {data.get('node')} of cluster {data.get('cluster')!r}, not "
                f"of node {self.node_id} of {self.cluster!r}; give each node its own node.data_dir"
            )
        return data

    # ------------------------------------------------------------------ writing
    def save_view(self, view: View) -> None:
        """The view just installed (a total restart starts from the last one)."""
        self._write("view", {"view": view.to_wire()})

    def save_installed(self, view: View, persistent_types: set[str]) -> None:
        """A view was installed: shards of persistent types this node starts to receive by
        state transfer are marked unfinished first, then the view is saved (OSError: the
        disk failed)."""
        me = self.node_id
        self.mark_incomplete(
            sid
            for sid, src in view.sources
            if src != me and sid.type_name in persistent_types and me in view.layout.members_of(sid)
        )
        self.save_view(view)

    def save_installed_or(self, view: View, persistent_types: set[str], fail: FailStop) -> None:
        """:meth:`save_installed` if the node has persistent types; a disk that fails it
        fail-stops the node (``fail(why, exit code)``)."""
        if persistent_types:
            try:
                self.save_installed(view, persistent_types)
            except OSError as exc:
                fail(f"storage failure: saving view {view.vid} in {self.data_dir} failed: {exc}", EXIT_STORAGE)

    def clear_incomplete_or(self, shard: ShardId, persistent_types: set[str], fail: FailStop) -> None:
        """A state transfer of ``shard`` landed: :meth:`clear_incomplete`, or fail-stop."""
        if persistent_types:
            try:
                self.clear_incomplete(shard)
            except OSError as exc:
                fail(f"storage failure: {self.data_dir}: {exc}", EXIT_STORAGE)

    def record_accepted(self, vid: int) -> None:
        """This node accepts view change ``vid``: durable before the acceptance leaves."""
        if vid > self._accepted:
            self._write("accepted", {"vid": vid})
            self._accepted = vid

    def note_frontier(self, shard: ShardId, version: int) -> bool:
        """A shard's persistence frontier moved (kept in memory); returns whether it differs
        from what is on disk (the caller writes with :meth:`write_frontiers`, lazily)."""
        if version > self._frontiers.get(shard, -1):
            self._frontiers[shard] = version
        return self._frontiers != self._frontiers_written

    def write_frontiers(self) -> None:
        snapshot = dict(self._frontiers)
        if snapshot != self._frontiers_written:
            self._write("frontiers", {"frontiers": [[list(s), v] for s, v in sorted(snapshot.items())]})
            self._frontiers_written = snapshot

    def mark_incomplete(self, shards: Iterable[ShardId]) -> None:
        """State transfers of these shards start: until they land, this node's logs of them
        vouch for nothing. Durable before the view naming them is saved."""
        new = set(shards) - self._incomplete
        if new:
            self._incomplete |= new
            self._write("incomplete", {"shards": [list(s) for s in sorted(self._incomplete)]})

    def clear_incomplete(self, shard: ShardId) -> None:
        if shard in self._incomplete:
            self._incomplete.discard(shard)
            self._write("incomplete", {"shards": [list(s) for s in sorted(self._incomplete)]})

    def record_lost(self, lost: dict[ShardId, tuple[int, int]]) -> None:
        """Versions a restart gave up (with ``--accept-loss``), merged with earlier ones."""
        known = self.lost()
        for sid, (lo, hi) in lost.items():
            old = known.get(sid)
            known[sid] = (min(lo, old[0]), max(hi, old[1])) if old else (lo, hi)
        self._write("lost", {"lost": [[list(s), lo, hi] for s, (lo, hi) in sorted(known.items())]})

    # ------------------------------------------------------------------ kept logs
    def keep_log(self, path: Path, log_: Any) -> None:
        with self._lock:
            old = self._kept.pop(path, None)
            self._kept[path] = log_
        if old is not None:
            old.close()

    def take_log(self, path: Path) -> Any:
        """The log at ``path`` as :func:`saved_state` opened and checked it (a
        :class:`~derecho_actors.replica.prebuild.Prebuild`: with its object rebuilt), handed
        over once (its index is current: nobody else writes the file while this process
        holds its lock); None if none is kept: open it."""
        with self._lock:
            return self._kept.pop(Path(path), None)

    def close_kept(self, but: Iterable[Path] = ()) -> None:
        """Close the logs no replica took, except those at ``but`` (the node closes)."""
        spare = set(but)
        with self._lock:
            kept = [self._kept.pop(p) for p in list(self._kept) if p not in spare]
        for log_ in kept:
            log_.close()

    def release_unheld(self, view: View) -> None:
        """A view was installed (its replicas made): close the kept logs of shards it does
        not give this node, whose index would only hold memory (a later replica of such a
        shard opens its log itself). An inadequate view runs no shard: keep them."""
        if self._kept and view.layout.adequate:
            mine = view.my_shards(self.node_id)
            self.close_kept(but=[log_path(self.data_dir, s.type_name, s.subgroup, s.shard) for s in mine])

    # ------------------------------------------------------------------ reading
    def lost(self) -> dict[ShardId, tuple[int, int]]:
        data = self._read("lost")
        if data is None:
            return {}
        return {_sid(s): (int(lo), int(hi)) for s, lo, hi in data.get("lost", [])}

    def load(self, logs: dict[ShardId, int]) -> SavedState | None:
        """What an earlier run left, or None if this node never installed a view here;
        ``logs`` are the last versions of the node's logs (the caller reads them)."""
        data = self._read("view")
        if data is None:
            return None
        try:
            view = View.from_wire(data["view"])
        except Exception as exc:
            raise RestartError(
                f"{self._path('view')} holds no valid view ({exc}); move it aside to start as new"
            ) from None
        accepted = self._read("accepted")
        frontiers = self._read("frontiers")
        incomplete = self._read("incomplete")
        self._accepted = int(accepted["vid"]) if accepted else -1
        self._frontiers = {_sid(s): int(v) for s, v in (frontiers or {}).get("frontiers", [])}
        self._frontiers_written = dict(self._frontiers)
        self._incomplete = {_sid(s) for s in (incomplete or {}).get("shards", [])}
        return SavedState(view, logs, self._accepted, dict(self._frontiers), frozenset(self._incomplete))


def group_signing_key(specs: Iterable[Any], key_file: str, credentials: Any) -> Any:
    """The key that signs this node's logs of signed types (None if no type signs): its
    certificate's key under TLS (peers check it against the certificate), else the key in
    ``persistence.signing_key`` (``key_file``)."""
    signed = [s.name for s in specs if s.signed]
    if not signed:
        return None
    if credentials is not None:
        return credentials.signing_key()
    if not key_file:
        raise ConfigError(
            f"{', '.join(signed)} sign their logs (signed=True): without TLS, set persistence.signing_key to "
            "this node's own key (make one with `derecho-actors keygen PATH`)"
        )
    from runtime.drivers.log_store import load_signing_key

    return load_signing_key(key_file)


def saved_state(
    disk: NodeDiskState, specs: Iterable[Any], signing_key: Any, fsync: bool, keep: bool = False
) -> SavedState | None:
    """What an earlier run of this node left in its data directory (its last view and the
    last version of each log of a persistent type), or None if there is nothing to restart
    from: the node then founds or joins afresh. ``keep``: leave each unsigned log open in
    ``disk`` for its replica (:meth:`NodeDiskState.take_log`), which then need not read it
    again, and rebuild the replica's object from it meanwhile, while the node waits for the
    others (``replica.prebuild``); a signed log is closed, as its replica opens it checking
    every signature, which this read skips."""
    persistent = [s for s in specs if s.persistent]
    if not persistent or not disk._path("view").exists():
        return None
    try:
        saved = _read_saved(disk, persistent, signing_key, fsync, keep)
    except BaseException:
        disk.close_kept()
        raise
    if saved is None:
        disk.close_kept()
    return saved


def _read_saved(
    disk: NodeDiskState, persistent: list[Any], signing_key: Any, fsync: bool, keep: bool
) -> SavedState | None:
    from runtime.drivers.log_store import VersionedLog

    logs: dict[ShardId, int] = {}
    for spec in persistent:
        for file in sorted(disk.data_dir.glob(f"{spec.name}.*.*.log")):
            parts = file.name[len(spec.name) + 1 : -len(".log")].split(".")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                continue
            key = signing_key if spec.signed else None
            lg = VersionedLog.open(file, signing_key=key, fsync=fsync, check_signatures=False)
            if lg.recovery is not None:
                log.warning("log %s was repaired on open: %s", file, lg.recovery)
            logs[ShardId(spec.name, int(parts[0]), int(parts[1]))] = lg.last_version
            if keep and not spec.signed:
                disk.keep_log(file, Prebuild(spec, lg))
            else:
                lg.close()
    saved = disk.load(logs)
    if saved is not None:
        log.info(
            "node %s restarts from %s: last view %d (accepted %d), logs %s, recorded frontiers %s%s",
            disk.node_id,
            disk.data_dir,
            saved.view.vid,
            saved.accepted_vid,
            {str(k): v for k, v in logs.items()},
            {str(k): v for k, v in saved.frontiers.items()},
            f", unfinished transfers {sorted(map(str, saved.incomplete))}" if saved.incomplete else "",
        )
    return saved

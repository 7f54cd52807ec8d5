"""Reads of the past through a replica's persistent store: a version's record, the state at a
version or a time, and whether a version may be read at all (on disk at every replica, and not
among the versions a total restart gave up). A part of ``PersistentStore``, apart so that each
module stays short."""

from __future__ import annotations

import copy
import threading
from typing import Any

from derecho_actors.model.fields import Persistent
from derecho_actors.replica.history import FieldHistory, MapSnapshot, Snapshot, latest_at
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.serializers import unpack_msgpack_large
from runtime.core.versions import format_version
from runtime.errors import NotPersistedYet, VersionLost


class PastReads:
    """Reads of the past; the store provides the log, its lock, the fields and their history,
    the frontier and the lost range."""

    _lock: threading.Lock
    log: Any  # runtime.drivers.log_store.VersionedLog
    lost: tuple[int, int] | None
    frontier: int
    fields: dict[str, Persistent]
    history: FieldHistory
    obj: Any

    serializer: str

    def _decode(self, data: bytes) -> Any:
        return _codec.decode_result(data, self.serializer)

    def read_record(self, version: int) -> dict[str, Any]:
        with self._lock:
            body = self.log.read(version)
        return unpack_msgpack_large(body)[2]  # a large record's large values copied without the GIL

    def check_readable(self, version: int) -> None:
        lost = self.lost
        if lost is not None and lost[0] <= version <= lost[1]:
            raise VersionLost(
                f"version {format_version(version)} is gone: a total restart found no log holding versions "
                f"{format_version(lost[0])} to {format_version(lost[1])} and the operator accepted the loss; "
                "read a version outside that range"
            )
        if version > self.frontier:
            raise NotPersistedYet(
                f"version {format_version(version)} is not on disk at every replica yet (persisted up to "
                f"{format_version(self.frontier)}); wait for the call's QueryResults.persisted() or read an older version"
            )

    def version_at_time(self, timestamp_ns: int) -> int:
        """The latest persisted version stamped at or before ``timestamp_ns`` (-1: none)."""
        with self._lock:
            found = self.log.latest_at_or_before_time(timestamp_ns)
            lost = self.lost
            if lost is not None and (found is None or found[0] < lost[0]):
                # ``found`` is the latest version stamped at or before that time; if the lost
                # range follows it directly, a lost version may be the true answer.
                after = next(iter(self.log.iter_from(found[0] if found is not None else -1)), None)
                if after is None or after[0] > lost[1]:
                    raise VersionLost(
                        f"the state at that time may be one of the lost versions {format_version(lost[0])} to "
                        f"{format_version(lost[1])} (a total restart gave them up); ask for a later time"
                    )
            if found is not None and found[0] > self.frontier:
                raise NotPersistedYet(
                    f"version {format_version(found[0])}, the latest at that time, is not on disk at every replica "
                    f"yet (persisted up to {format_version(self.frontier)}); ask again shortly"
                )
        return found[0] if found is not None else -1

    def value_at(self, name: str, version: int) -> Any:
        field = self.fields[name]
        if name in self.history.values:
            v = latest_at(self.history.values[name], version)
            if v is None:
                return copy.deepcopy(field.default)
            return self._decode(self.read_record(v)[name][1])
        return MapSnapshot(self, name, version)

    def snapshot(self, version: int) -> Snapshot:
        """The persistent fields as they were right after ``version`` (``da.at_version``)."""
        return Snapshot(self, version)

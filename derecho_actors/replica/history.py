"""The past of a replica's persistent fields: which versions changed which field (and which
keys of a dict field), and read-only snapshots of the fields at one version, each value read
from the log on demand. The store (``store.py``) keeps the index and reads the records."""

from __future__ import annotations

import bisect
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

from derecho_actors.model.fields import DELETED, Persistent, _wrap
from derecho_actors.wire.serializers import unpack_msgpack_large
from runtime.core.versions import format_version


class Records(Protocol):
    """What a snapshot reads through: the store of one replica's persistent fields."""

    @property
    def fields(self) -> Mapping[str, Persistent]: ...

    @property
    def history(self) -> FieldHistory: ...

    @property
    def obj(self) -> Any: ...

    def read_record(self, version: int) -> dict[str, Any]: ...

    def value_at(self, name: str, version: int) -> Any: ...

    def _decode(self, data: bytes) -> Any: ...


class FieldHistory:
    """Which versions changed each field (and each key of dict fields): an index into the log
    that lets a read of the past fetch exactly one record per value."""

    def __init__(self, fields: Mapping[str, Persistent]) -> None:
        self.values: dict[str, list[int]] = {}
        self.keys: dict[str, dict[Any, list[int]]] = {}
        self.replaced: dict[str, list[int]] = {}
        for name, f in fields.items():
            if isinstance(f.default, dict):
                self.keys[name] = {}
                self.replaced[name] = []
            else:
                self.values[name] = []

    def note(self, version: int, changes: Mapping[str, Any], decode: Callable[[bytes], Any]) -> None:
        """Index a record read back from the log (replay)."""
        for name, change in changes.items():
            if change[0] == "v":
                self.note_value(name, version)
            else:
                _, replaced, sets, dels = change
                changed = [hashable_key(k) for k, _v in decode(sets)] if sets else []
                if dels:
                    changed += [hashable_key(k) for k in decode(dels)]
                self.note_keys(name, version, changed, replaced)

    def note_value(self, name: str, version: int) -> None:
        self.values.setdefault(name, []).append(version)

    def note_keys(self, name: str, version: int, changed: Iterable[Any], replaced: bool) -> None:
        """``version`` set or deleted these keys of dict field ``name`` (after clearing it, if
        ``replaced``)."""
        if replaced:
            self.replaced.setdefault(name, []).append(version)
        keys = self.keys.setdefault(name, {})
        for k in changed:
            versions = keys.get(k)
            if versions is None:
                keys[k] = [version]
            else:
                versions.append(version)


def apply_records(
    records: list[tuple[int, int, bytes]],
    obj: Any,
    fields: Mapping[str, Persistent],
    history: FieldHistory,
    decode: Callable[[bytes], Any],
) -> list[tuple[int, int, int]]:
    """Replay log records (the store's record bodies, see ``store.py``) into ``obj``'s
    fields and index them in ``history``; return each call's ``(origin, call_id,
    timestamp_ns)``. Each record is decoded once, applied and indexed in the same pass (a
    replay of a long log is what a restarted replica waits for before it can serve)."""
    unpack = unpack_msgpack_large  # a large record's large values copied without the GIL
    d = obj.__dict__
    calls: list[tuple[int, int, int]] = []
    for version, ts, body in records:
        origin, call_id, changes = unpack(body)
        for name, change in changes.items():
            if name not in fields:  # a field the class no longer has: indexed only
                history.note(version, {name: change}, decode)
            elif change[0] == "v":
                d[name] = _wrap(decode(change[1]), replaced=False)
                history.note_value(name, version)
            else:
                _, replaced, sets, dels = change
                current = getattr(obj, name)
                if replaced:
                    dict.clear(current)
                    history.note_keys(name, version, (), True)
                index = history.keys.get(name)
                if index is None:
                    index = history.keys.setdefault(name, {})
                for key, value in decode(sets) if sets else ():
                    if isinstance(key, list):
                        key = hashable_key(key)
                    dict.__setitem__(current, key, value)
                    seen = index.get(key)  # history.note_keys, inlined
                    if seen is None:
                        index[key] = [version]
                    else:
                        seen.append(version)
                for key in decode(dels) if dels else ():
                    key = hashable_key(key)
                    dict.pop(current, key, None)
                    history.note_keys(name, version, (key,), False)
        calls.append((origin, call_id, ts))
    return calls


def hashable_key(key: Any) -> Any:
    return tuple(hashable_key(k) for k in key) if isinstance(key, list) else key


def latest_at(versions: list[int], at: int) -> int | None:
    i = bisect.bisect_right(versions, at)
    return versions[i - 1] if i else None


class MapSnapshot(Mapping[Any, Any]):
    """A dict field as it was at one version (read-only; each key costs one record read)."""

    def __init__(self, store: Records, name: str, version: int) -> None:
        self._store, self._name, self._version = store, name, version
        self._default = store.fields[name].default or {}

    def _lookup(self, key: Any) -> Any:
        store, name, at = self._store, self._name, self._version
        kv = latest_at(store.history.keys.get(name, {}).get(key, []), at)
        cv = latest_at(store.history.replaced.get(name, []), at)
        if kv is None:
            if cv is None and key in self._default:
                return self._default[key]
            return DELETED
        if cv is not None and cv > kv:
            return DELETED
        _, _replaced, sets, _dels = store.read_record(kv)[name]
        for k, v in store._decode(sets) if sets else ():
            if hashable_key(k) == key:
                return v
        return DELETED

    def __getitem__(self, key: Any) -> Any:
        value = self._lookup(key)
        if value is DELETED:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[Any]:
        candidates = set(self._store.history.keys.get(self._name, {})) | set(self._default)
        for key in candidates:
            if self._lookup(key) is not DELETED:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"<{self._name} at version {format_version(self._version)}: {dict(self)!r}>"


class Snapshot:
    """The persistent fields of a replicated object at one version (read-only attributes)."""

    def __init__(self, store: Records, version: int) -> None:
        self._store = store
        self.version = version

    def __getattr__(self, name: str) -> Any:
        store = self.__dict__["_store"]
        if name not in store.fields:
            raise AttributeError(f"{name!r} is not a persistent field of {type(store.obj).__name__}")
        return store.value_at(name, self.__dict__["version"])

    def __repr__(self) -> str:
        return f"<Snapshot at version {format_version(self.version)}>"

"""``Persistent`` fields as users declare them, and the reads of the past users call in their
methods (``da.at_version``, ``da.at_time``, ``da.current_version``, ``da.persisted_version``).

The field is a descriptor over the object's ``__dict__``; a dict value is a :class:`TrackedDict`
that remembers which keys changed, so the replica's store (``replica.store``) logs only those.
The reads go to that store through the object's ``STORE_ATTR`` attribute: nothing here imports
the store, so this module is part of what users write.
"""

from __future__ import annotations

import copy
from typing import Any

DELETED = object()


class Persistent:
    """A field whose every change is logged on disk as a new version.

    ``Persistent(default)``: the starting value (copied for each replica). The value must be
    encodable by the type's serializer (plain data for msgpack). A dict value logs per-key
    changes; store new values in it (``d[k] = v``), since changes *inside* a value held by the
    dict are not seen.
    """

    def __init__(self, default: Any = None) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        try:
            return d[self.name]
        except KeyError:
            value = _wrap(copy.deepcopy(self.default), replaced=False)
            d[self.name] = value
            return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = _wrap(value, replaced=True)


def _wrap(value: Any, replaced: bool) -> Any:
    if isinstance(value, dict):
        tracked = TrackedDict(value)
        tracked._replaced = replaced
        return tracked
    return value


class TrackedDict(dict):
    """A dict that remembers which keys changed since the last record."""

    _replaced = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changed: dict[Any, Any] = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed[key] = value

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._changed[key] = DELETED

    def pop(self, key: Any, *default: Any) -> Any:
        had = key in self
        value = super().pop(key, *default)
        if had:
            self._changed[key] = DELETED
        return value

    def popitem(self) -> tuple[Any, Any]:
        key, value = super().popitem()
        self._changed[key] = DELETED
        return key, value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> TrackedDict:  # type: ignore[misc]
        self.update(other)
        return self

    def clear(self) -> None:
        super().clear()
        self._changed.clear()
        self._replaced = True

    def __reduce__(self) -> Any:  # pickles as a plain dict (state transfer, user copies)
        return (dict, (dict(self),))


def persistent_fields(cls: type) -> dict[str, Persistent]:
    out: dict[str, Persistent] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            if isinstance(attr, Persistent):
                out[name] = attr
    return out


STORE_ATTR = "__derecho_store__"


def _store_of(obj: Any) -> Any:
    store = getattr(obj, STORE_ATTR, None)
    if store is None:
        raise TypeError(
            f"{type(obj).__name__} has no persistent log here: at_version/at_time work inside methods of a "
            "replicated type with Persistent fields"
        )
    return store


def at_version(obj: Any, version: int) -> Any:
    """The persistent fields of ``obj`` (a replica, usually ``self`` in a @p2p method) as they
    were right after ``version``. Raises NotPersistedYet for a version not yet on disk at every
    replica of the shard."""
    store = _store_of(obj)
    if type(version) is not int or version < 0:
        raise ValueError(f"a version is a non-negative int, got {version!r}")
    store.check_readable(version)
    return store.snapshot(version)


def at_time(obj: Any, timestamp_ns: int) -> Any:
    """The persistent fields of ``obj`` at wall-clock time ``timestamp_ns`` (``time.time_ns()``
    scale): the latest version stamped at or before it. Before the first version, the fields'
    defaults."""
    store = _store_of(obj)
    return store.snapshot(store.version_at_time(timestamp_ns))


def current_version(obj: Any) -> int:
    """The version of the last ordered call applied to ``obj`` (inside an ordered method: the
    running call's own version). -1 before any."""
    return _store_of(obj).last_version


def persisted_version(obj: Any) -> int:
    """The shard's persistence frontier as this replica knows it: every version up to it is
    on disk at every replica."""
    return _store_of(obj).frontier

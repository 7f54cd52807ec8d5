"""A replica's persistent state as a log checkpoint's payload, so a restart replays only the
log's tail (``runtime.drivers.log_checkpoint`` keeps the file and proves it still matches the
log; this module says what is in it and how it is put back).

The payload must give exactly what replaying the log's records up to its version gives, since
replicas that restart from checkpoints at different versions, or from none, must end equal:

- **fields**: each value field's last logged encoding (the store's baseline, what the last
  record holding it carried); for a dict field, whether it was ever replaced (cleared) and,
  for every key a record ever changed, its current value encoded (or that it is gone); keys
  never changed keep the class's default, as in a replay;
- **history**: the index of which version changed which field and key (reads of the past);
- **sessions**: the exactly-once table as a *replay* of those records builds it (call numbers
  and times per origin, no replies, no owners), which the store keeps beside the live table
  (the live one also holds replies and evictions that a replay never sees).

A payload of another format, serializer or set of fields (the class changed since) is not
used: the log is replayed whole, as before checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from derecho_actors.model.fields import Persistent, TrackedDict, _wrap
from derecho_actors.replica.history import FieldHistory, hashable_key
from derecho_actors.wire.large_args import BIG_BIN
from derecho_actors.wire.large_pack import MAX_WALK, pack_large
from derecho_actors.wire.packing import packb
from derecho_actors.wire.serializers import unpack_msgpack_large

log = logging.getLogger("derecho.persistent")

FORMAT = 1


CHECKPOINT_EVERY = 10_000
"""Records between log checkpoints at least, and at least an eighth of the log: rewriting one
(its index and history grow with the log) then costs about what the log's writes cost."""


@dataclass(frozen=True, slots=True)
class CheckpointJob:
    """A checkpoint for the writer thread to write once the records before it are durable."""

    version: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Restored:
    """What a checkpoint put back: the state after ``version`` (the log's ``count``-th
    record), and the replayed session table to load into the replica's own."""

    version: int
    timestamp_ns: int
    count: int
    sessions: dict[str, Any]


def payload(
    obj: Any,
    fields: Mapping[str, Persistent],
    serializer: str,
    history: FieldHistory,
    baseline: Mapping[str, bytes],
    sessions: dict[str, Any],
    encode: Callable[[Any], bytes],
) -> bytes | None:
    """The checkpoint payload of the state now (right after the last recorded call), or None
    if a field holds a kind of value its declaration does not (a value field assigned a dict:
    the payload could not say what a replay gives; such a log is replayed whole)."""
    values: dict[str, bytes] = {}
    maps: dict[str, list[Any]] = {}
    for name, f in fields.items():
        current = getattr(obj, name)
        if isinstance(f.default, dict):
            if not isinstance(current, TrackedDict):
                return None
            changed = history.keys.get(name, {})
            sets = [[k, current[k]] for k in changed if k in current]
            gone = [k for k in changed if k not in current]
            maps[name] = [bool(history.replaced.get(name)), encode(sets), encode(gone)]
        else:
            if isinstance(current, TrackedDict):
                return None
            if history.values.get(name):
                if name not in baseline:
                    return None
                values[name] = baseline[name]
    body = {
        "format": FORMAT,
        "serializer": serializer,
        "fields": sorted(fields),
        "values": values,
        "maps": maps,
        "history": {
            "values": history.values,
            "keys": {name: encode([[k, vs] for k, vs in keys.items()]) for name, keys in history.keys.items()},
            "replaced": history.replaced,
        },
        "sessions": sessions,
    }
    # A large field's encoding is copied into the payload without the GIL (``large_pack``):
    # msgpack would hold it for the copy, the node's loop waiting.
    if any(len(enc) >= BIG_BIN for enc in values.values()) or any(
        len(enc) >= BIG_BIN for m in maps.values() for enc in m[1:]
    ):
        packed = pack_large(body, packb, values=MAX_WALK)
        if packed is not None:
            return packed
    return packb(body)


def restore(
    data: bytes,
    obj: Any,
    fields: Mapping[str, Persistent],
    serializer: str,
    history: FieldHistory,
    decode: Callable[[bytes], Any],
) -> dict[str, Any] | None:
    """Put a payload's fields and history into ``obj`` (fresh from the class) and
    ``history`` (empty); returns the replayed session table's state, or None (nothing
    changed) if the payload does not fit this class."""
    try:
        body = unpack_msgpack_large(data, values=MAX_WALK)  # large values copied without the GIL
    except Exception as exc:
        log.warning("a log checkpoint does not decode (%s); the log is replayed whole", exc)
        return None
    if (
        not isinstance(body, dict)
        or body.get("format") != FORMAT
        or body.get("serializer") != serializer
        or body.get("fields") != sorted(fields)
    ):
        log.info("a log checkpoint of another format or class version is not used; the log is replayed whole")
        return None
    d = obj.__dict__
    for name, enc in body["values"].items():
        d[name] = _wrap(decode(enc), replaced=False)
    for name, (replaced, sets, gone) in body["maps"].items():
        current = getattr(obj, name)
        if replaced:
            dict.clear(current)
        for key, value in decode(sets):
            dict.__setitem__(current, hashable_key(key), value)
        for key in decode(gone):
            dict.pop(current, hashable_key(key), None)
    saved = body["history"]
    history.values.update({name: list(vs) for name, vs in saved["values"].items()})
    history.replaced.update({name: list(vs) for name, vs in saved["replaced"].items()})
    for name, enc in saved["keys"].items():
        history.keys[name] = {hashable_key(k): list(vs) for k, vs in decode(enc)}
    sessions: dict[str, Any] = body["sessions"]
    return sessions

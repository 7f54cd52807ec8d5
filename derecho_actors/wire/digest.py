"""State digests: a short fingerprint of a replica's state, and the comparison of the
fingerprints replicas send each other (``@replicated(digest_every=N)``).

Every replica of a shard applies the same ordered calls in the same order, so after the k-th
call of a view their states must be equal. A type with ``digest_every=N`` has each replica
digest its state after every N-th ordered call of a view, at version ``make_version(vid, k)``
(the numbering persistent types use, for atomic types too), and send it to the shard's other
replicas as a ``StateDigest`` message. Each compares the digests it gets with its own at the
same version (:class:`DigestBook`, on the node's loop); a mismatch means the replicas' states
differ (an ordered method that is not deterministic but returns the same thing everywhere,
say), and is logged at ERROR and counted in ``status``. Upstream Derecho would put such
values in the SST; the SST is the engine's, so they travel as actor messages here, under the
sender's proven identity like the signed log marks.

:func:`state_digest` is a pure function of the state (the simulator uses it too). It takes
what a state transfer sends (the object's own attributes, or its ``__getstate__``, and the
persistent fields' current values) plus the exactly-once session table's applied call numbers,
in a *canonical* encoding: dict entries and set items sorted by their encoding. The transfer
encoding itself is not canonical, and need not be: two replicas with equal state may hold a
dict's keys in another insertion order (a persistent dict rebuilt from its log) or iterate a
set of strings in another order (string hashes differ between processes).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable

import msgpack

from derecho_actors.model.fields import STORE_ATTR
from runtime.core.layout import ShardId
from runtime.core.status import DigestMismatch, ShardDigests
from runtime.core.versions import format_version
from runtime.core.view import View

log = logging.getLogger("derecho.digest")

DIGEST_SIZE = 16
KEEP_VERSIONS = 64
"""Versions per shard whose digests are kept for comparison (own and each peer's)."""


# ----------------------------------------------------------------------- canonical form
def _canon(value: Any, path: set[int]) -> bytes:
    t = type(value)
    if value is None or t is bool or t is str or t is bytes or t is float:
        return msgpack.packb(value, use_bin_type=True)
    if t is int:
        if -(1 << 63) <= value < (1 << 64):
            return msgpack.packb(value)
        return b"I" + str(value).encode()
    key = id(value)
    if key in path:
        return b"<cycle>"
    path.add(key)
    try:
        if isinstance(value, dict):
            items = sorted(_canon(k, path) + _canon(v, path) for k, v in value.items())
            return msgpack.packb(["d", items], use_bin_type=True)
        if isinstance(value, (set, frozenset)):
            return msgpack.packb(["s", sorted(_canon(v, path) for v in value)], use_bin_type=True)
        if isinstance(value, (list, tuple)):
            tag = "l" if isinstance(value, list) else "t"
            return msgpack.packb([tag, [_canon(v, path) for v in value]], use_bin_type=True)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return msgpack.packb(["b", bytes(value)], use_bin_type=True)
        for plain in (str, int, float):  # subclasses (enums, ...): their plain value
            if isinstance(value, plain):
                return _canon(plain(value), path)
        return _canon_object(value, path)
    finally:
        path.discard(key)


def _canon_object(value: Any, path: set[int]) -> bytes:
    """Any other object by what pickling it would keep (class, arguments, state): neither its
    address nor its set and dict orders."""
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return msgpack.packb(["f", _name(value)], use_bin_type=True)
    try:
        reduced = value.__reduce_ex__(4)
    except Exception:
        reduced = None
    if not isinstance(reduced, tuple):
        return msgpack.packb(["o", _name(type(value))], use_bin_type=True)
    fn, args, *rest = reduced + (None,) * (5 - len(reduced))
    state, listitems, dictitems = rest[:3]
    parts = [_name(fn), _canon(args, path), _canon(state, path)]
    if listitems is not None:
        parts.append(_canon(list(listitems), path))
    if dictitems is not None:
        parts.append(_canon(dict(dictitems), path))
    return msgpack.packb(["o", _name(type(value)), parts], use_bin_type=True)


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def canonical(value: Any) -> bytes:
    """``value`` encoded so that equal values encode equally, whatever their dict insertion
    or set iteration order (and NaN equals NaN)."""
    return _canon(value, set())


# ------------------------------------------------------------------------------- digest
def object_attrs(obj: Any, fields: tuple[str, ...] | Any) -> Any:
    """The object's own state as a state transfer sends it: its ``__getstate__`` if its class
    defines one, else its attributes other than the persistent fields and the log."""
    if type(obj).__getstate__ is not object.__getstate__:
        return obj.__getstate__()
    skip = set(fields)
    return {k: v for k, v in obj.__dict__.items() if k not in skip and k != STORE_ATTR}


def state_digest(source: Any, spec: Any) -> bytes:
    """Digest (blake2b, 16 bytes) of a replica's state: ``source`` is a ``Replica`` (object
    and exactly-once table) or the replicated object itself; ``spec`` its ``TypeSpec``."""
    obj = getattr(source, "obj", source)
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    h.update(canonical(object_attrs(obj, spec.fields)))
    for name in spec.fields:
        h.update(canonical([name, getattr(obj, name)]))
    sessions = getattr(source, "sessions", None)
    if sessions is not None:  # which calls each caller had applied (not the kept replies: results)
        h.update(canonical({origin: s.last for origin, s in sessions.sessions.items()}))
    return h.digest()


# --------------------------------------------------------------------------- comparison
class DigestBook:
    """On the node's loop: this node's digests and its peers', per shard and version; compares
    them as they meet and reports mismatches (ERROR once per shard, version and peer)."""

    def __init__(self, node_id: int, send: Callable[[int, bytes], None], view: Callable[[], View | None]) -> None:
        """``send(node, data)``: an actor message to a member."""
        self.node_id = node_id
        self.send = send
        self.view = view
        self.mine: dict[ShardId, dict[int, bytes]] = {}
        self.theirs: dict[ShardId, dict[int, dict[int, bytes]]] = {}  # shard -> peer -> version -> digest
        self.checked: dict[ShardId, int] = {}
        self.agreed: dict[ShardId, dict[int, int]] = {}  # shard -> peer -> last version found equal
        self.mismatches: dict[ShardId, list[DigestMismatch]] = {}  # the last few per shard
        self.counts: dict[ShardId, int] = {}

    def digested(self, sid: ShardId, version: int, digest: bytes) -> None:
        """Our replica of ``sid`` digested its state at ``version``: keep it, compare it, and
        send it to the shard's other replicas."""
        from derecho_actors.wire.messages import StateDigest, encode

        mine = self.mine.setdefault(sid, {})
        mine[version] = digest
        _trim(mine)
        for peer, versions in self.theirs.get(sid, {}).items():
            theirs = versions.pop(version, None)
            if theirs is not None:
                self._compare(sid, version, peer, theirs, digest)
        view = self.view()
        if view is None:
            return
        data = encode(StateDigest(sid, version, digest))
        for node in view.layout.members_of(sid):
            if node != self.node_id:
                self.send(node, data)

    def on_digest(self, sender: int, sid: ShardId, version: int, digest: bytes) -> None:
        """A peer's digest (``sender`` is the connection's proven identity)."""
        view = self.view()
        if view is None or sender not in view.layout.members_of(sid):
            log.warning("node %s sent a state digest of %s, which it does not hold in this view; ignored", sender, sid)
            return
        mine = self.mine.get(sid)
        if mine is not None and version in mine:
            self._compare(sid, version, sender, digest, mine[version])
            return
        if mine and version < min(mine):
            return  # older than anything we keep: nothing to compare with
        versions = self.theirs.setdefault(sid, {}).setdefault(sender, {})
        versions[version] = digest
        _trim(versions)

    def _compare(self, sid: ShardId, version: int, peer: int, theirs: bytes, mine: bytes) -> None:
        self.checked[sid] = self.checked.get(sid, 0) + 1
        if theirs == mine:
            agreed = self.agreed.setdefault(sid, {})
            agreed[peer] = max(agreed.get(peer, -1), version)
            return
        self.counts[sid] = self.counts.get(sid, 0) + 1
        kept = self.mismatches.setdefault(sid, [])
        kept.append(DigestMismatch(version, ((self.node_id, mine.hex()), (peer, theirs.hex()))))
        del kept[:-8]
        log.error(
            "replicas of %s diverge: at version %s node %s's state digest is %s and node %s's is %s (they applied the "
            "same calls, so their states should be equal): an ordered method is not deterministic in how it changes "
            "state (clocks, randomness, set order, I/O); fix it, then restart the replica(s) in the minority so they "
            "get the state again by transfer",
            sid,
            format_version(version),
            self.node_id,
            mine.hex(),
            peer,
            theirs.hex(),
        )

    def forget(self, sid: ShardId) -> None:
        """This node no longer holds ``sid``."""
        self.mine.pop(sid, None)
        self.theirs.pop(sid, None)

    def status(self) -> tuple[ShardDigests, ...]:
        """Per shard compared here: digests compared, mismatches (the last few, with both
        digests and nodes), and the last version each peer was found equal at."""
        return tuple(
            ShardDigests(
                shard=str(sid),
                compared=self.checked.get(sid, 0),
                mismatches=self.counts.get(sid, 0),
                last_mismatches=tuple(self.mismatches.get(sid, ())),
                agreed=tuple(self.agreed.get(sid, {}).items()),
            )
            for sid in sorted(set(self.checked) | set(self.counts), key=str)
        )


def _trim(versions: dict[int, Any]) -> None:
    if len(versions) > KEEP_VERSIONS:
        for v in sorted(versions)[: len(versions) - KEEP_VERSIONS]:
            del versions[v]

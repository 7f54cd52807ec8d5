"""Rebuilding a replica from its log (``PersistentStore.replay``): a batch of records at a time,
each decoded once. What it must give is what the calls gave when they ran: the same fields,
the same history index (reads of the past), the same exactly-once table; and the same again
when it resumes from a prefix after a state transfer appended the tail (``state.catch_up``),
so a transfer that brings nothing new costs no replay at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest

import derecho_actors as da
from derecho_actors.model.decorators import spec_of
from derecho_actors.model.fields import persistent_fields
from derecho_actors.replica.messages import StatePart
from derecho_actors.replica.replica import Replica, ReplicaEnv
from derecho_actors.replica.state import object_state
from derecho_actors.replica.store import PersistentStore
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import ChunkKind
from runtime.core.versions import make_version
from runtime.drivers.log_store import VersionedLog
from runtime.errors import SerializationError

pytestmark = pytest.mark.timeout(30)


@da.replicated
class Doc:
    m = da.Persistent({})
    n = da.Persistent(0)
    tags = da.Persistent({"seed": 1})

    @da.p2p
    def read(self) -> int:
        return self.n


Step = Callable[[Any], None]


def _set(key: Any, value: Any) -> Step:
    return lambda o: o.m.__setitem__(key, value)


def _del(key: Any) -> Step:
    return lambda o: o.m.__delitem__(key)


def _n(value: int) -> Step:
    return lambda o: setattr(o, "n", value)


def _replace(value: dict[str, Any]) -> Step:
    return lambda o: setattr(o, "m", value)


def _tags(key: str) -> Step:
    return lambda o: o.tags.__setitem__(key, 2)


STEPS: list[Step] = [
    _set("a", 1),
    _set(("t", 1), b"x"),  # a tuple key: a list on the wire, a tuple again on replay
    _n(5),
    _set("a", 2),
    _del("a"),
    _tags("more"),
    _replace({"fresh": 1, "b": [1, 2]}),
    _set("b", None),
    _n(6),
    _del("fresh"),
]
ORIGINS = [0, 7, 7, 0, 9, 7, 0, 9, 9, 7]  # 0: a member's own call (no session)


def _write_log(path: Path, steps: list[Step]) -> PersistentStore:
    """Run ``steps`` as calls (one version each) and log them, as a replica does."""
    obj = Doc()
    store = PersistentStore(
        obj, persistent_fields(Doc), "msgpack", VersionedLog.open(path, fsync=False), lambda v: None
    )
    store.inline = True
    store.reset_tracking()
    for i, step in enumerate(steps):
        step(obj)
        store.submit([store.record(make_version(2, i), 1000 + i, ORIGINS[i], 100 + i)])
    return store


def _replayed(path: Path) -> tuple[PersistentStore, list[tuple[int, int, int]]]:
    obj = Doc()
    store = PersistentStore(
        obj, persistent_fields(Doc), "msgpack", VersionedLog.open(path, fsync=False), lambda v: None
    )
    calls = [c for batch in store.replay() for c in batch]
    return store, calls


def _fields(obj: Any) -> tuple[Any, ...]:
    return dict(obj.m), obj.n, dict(obj.tags)


def test_replay_gives_the_fields_index_and_calls_the_calls_gave(tmp_path: Path) -> None:
    path = tmp_path / "Doc.0.0.log"
    written = _write_log(path, STEPS)
    expected = (_fields(written.obj), written.history.keys, written.history.values, written.history.replaced)
    written.close()
    store, calls = _replayed(path)
    h = store.history
    assert (_fields(store.obj), h.keys, h.values, h.replaced) == expected
    assert calls == [(ORIGINS[i], 100 + i, 1000 + i) for i in range(len(STEPS))]
    assert store.last_version == make_version(2, len(STEPS) - 1) == store.durable_version
    assert store.snapshot(make_version(2, 3)).m["a"] == 2  # the index reads the past right
    store.close()


def _body(origin: int, call_id: int, changes: dict[str, Any]) -> bytes:
    return msgpack.packb([origin, call_id, changes], use_bin_type=True)


def _enc(value: Any) -> bytes:
    return _codec.encode_result(value, "msgpack")


def test_record_bodies_are_the_documented_format(tmp_path: Path) -> None:
    """Each record's body, byte for byte, as ``store.py``'s docstring lays it out (the fast
    path of ``record`` must not change what replicas, signatures and replays read)."""
    store = _write_log(tmp_path / "Doc.0.0.log", STEPS)
    with store.log_held() as lg:
        bodies = [body for _v, _t, body in lg.iter_from(-1)]
    store.close()
    m = lambda sets, dels=b"", replaced=False: ["m", replaced, sets, dels]  # noqa: E731
    changes: list[dict[str, Any]] = [
        {"m": m(_enc([["a", 1]]))},
        {"m": m(_enc([[["t", 1], b"x"]]))},
        {"n": ["v", _enc(5)]},
        {"m": m(_enc([["a", 2]]))},
        {"m": m(b"", _enc(["a"]))},
        {"tags": m(_enc([["more", 2]]))},
        {"m": m(_enc([["fresh", 1], ["b", [1, 2]]]), replaced=True)},
        {"m": m(_enc([["b", None]]))},
        {"n": ["v", _enc(6)]},
        {"m": m(b"", _enc(["fresh"]))},
    ]
    assert bodies == [_body(ORIGINS[i], 100 + i, c) for i, c in enumerate(changes)]


def test_a_call_changing_several_keys_and_fields_logs_them_in_one_record(tmp_path: Path) -> None:
    """Beside the one-key change (``record``'s fast path, above): several keys set and
    deleted in one call, and two fields at once, each in the documented format."""

    def many(o: Any) -> None:
        o.m.update({"x": 1, "y": 2})
        o.m.pop("x")  # set, then deleted: logged as deleted
        o.m["z"] = 3
        o.tags["seed"] = 5
        del o.tags["seed"]

    def both(o: Any) -> None:
        o.m["y"] = 4
        o.n = 7

    store = _write_log(tmp_path / "Doc.0.0.log", [many, both])
    with store.log_held() as lg:
        bodies = [body for _v, _t, body in lg.iter_from(-1)]
    store.close()
    assert bodies == [
        _body(
            ORIGINS[0],
            100,
            {"m": ["m", False, _enc([["y", 2], ["z", 3]]), _enc(["x"])], "tags": ["m", False, b"", _enc(["seed"])]},
        ),
        _body(ORIGINS[1], 101, {"m": ["m", False, _enc([["y", 4]]), b""], "n": ["v", _enc(7)]}),
    ]
    replayed, _calls = _replayed(tmp_path / "Doc.0.0.log")
    assert (dict(replayed.obj.m), replayed.obj.n, dict(replayed.obj.tags)) == ({"y": 4, "z": 3}, 7, {})
    replayed.close()


def test_a_value_the_serializer_cannot_encode_is_a_serialization_error(tmp_path: Path) -> None:
    """A one-key change (``record``'s fast path) whose value msgpack cannot pack raises the
    error that names the serializer, as several keys would; the store stays usable."""
    obj = Doc()
    store = PersistentStore(
        obj, persistent_fields(Doc), "msgpack", VersionedLog.open(tmp_path / "Doc.0.0.log", fsync=False), lambda v: None
    )
    store.reset_tracking()
    obj.m["bad"] = {1, 2}  # a set: no msgpack type
    with pytest.raises(SerializationError, match="msgpack"):
        store.record(make_version(2, 0), 1000, 0, 1)
    obj.m.clear()
    obj.m["good"] = 1
    assert msgpack.unpackb(store.record(make_version(2, 1), 1001, 0, 2)[2])[2]["m"][2] == _enc([["good", 1]])
    store.close()


def test_a_call_that_changes_nothing_logs_no_field(tmp_path: Path) -> None:
    """A call that leaves every field as it was (or sets a value to what it was) still gets
    its version, with no change in it."""
    store = _write_log(tmp_path / "Doc.0.0.log", [_n(3), _n(3), lambda o: None])
    with store.log_held() as lg:
        bodies = [msgpack.unpackb(body, raw=False) for _v, _t, body in lg.iter_from(-1)]
    store.close()
    assert [b[2] for b in bodies] == [{"n": ["v", _enc(3)]}, {}, {}]


@pytest.mark.parametrize("prefix", [0, 1, 4, 6, len(STEPS)])
def test_resuming_after_a_prefix_equals_a_full_replay(tmp_path: Path, prefix: int) -> None:
    """A store that replayed ``prefix`` records, then found the rest appended (a state
    transfer's tail), ends as one that replayed everything at once."""
    full = tmp_path / "full.log"
    _write_log(full, STEPS).close()
    want, want_calls = _replayed(full)
    part = tmp_path / "part.log"
    _write_log(part, STEPS[:prefix]).close()
    store, calls = _replayed(part)
    with want.log_held() as src:
        tail = list(src.iter_from(store.last_version))
    with store.log_held() as log_:
        log_.append(tail)
        log_.flush()
    calls += [c for batch in store.replay() for c in batch]
    assert _fields(store.obj) == _fields(want.obj)
    assert (store.history.keys, store.history.values, store.history.replaced) == (
        want.history.keys,
        want.history.values,
        want.history.replaced,
    )
    assert calls == want_calls and store.last_version == want.last_version
    store.close()
    want.close()


# ------------------------------------------------------------ a replica awaiting its state
def _replica(path: Path, awaiting: bool, asked: list[tuple[int, int]]) -> Replica:
    env = ReplicaEnv(
        1,
        lambda replies: None,
        path.parent / f"scratch-{path.stem}",
        log_path=path,
        fsync=False,
        inline_writes=True,
        request_state=lambda have, digest: asked.append((have, digest)),
    )
    r = Replica(spec_of(Doc), env, awaiting_state=awaiting)
    r.start()
    return r


@pytest.mark.parametrize("behind", [0, 3])
def test_a_transfer_replays_only_what_it_brings(tmp_path: Path, behind: int) -> None:
    """The source holds every step; the receiver's log lacks the last ``behind`` of them.
    After the transfer it serves the source's state, and replayed only the records sent."""
    _write_log(tmp_path / "src.log", STEPS).close()
    _write_log(tmp_path / "dst.log", STEPS[: len(STEPS) - behind]).close()
    source = _replica(tmp_path / "src.log", False, [])
    asked: list[tuple[int, int]] = []
    receiver = _replica(tmp_path / "dst.log", True, asked)
    store_before = receiver.store
    assert store_before is not None
    ((have, _digest),) = asked
    replayed: list[int] = []
    original = store_before.replay

    def counting() -> Any:
        for batch in original():
            replayed.append(len(batch))
            yield batch

    store_before.replay = counting  # type: ignore[method-assign]
    assert source.store is not None
    with source.store.log_held() as log_:
        tail = [list(r) for r in log_.iter_from(have)]
    data = _codec.encode_state(object_state(source), "msgpack", "the state")
    chunks = [StatePart(0, ChunkKind.OBJECT, data, not tail, False, 2, 3)]
    if tail:
        chunks.append(StatePart(1, ChunkKind.LOG, msgpack.packb(tail), True, False, 2, 3))
    for chunk in chunks:
        receiver.receive(chunk)
    assert not receiver.awaiting and receiver.failed is None
    assert receiver.store is store_before  # caught up in place, not rebuilt from the log
    assert sum(replayed) == behind
    assert _fields(receiver.obj) == _fields(source.obj)
    assert receiver.store.last_version == source.store.last_version
    assert receiver.sessions.to_state() == source.sessions.to_state()
    assert receiver.store.history.keys == source.store.history.keys
    source.stop()
    receiver.stop()


# ------------------------------------------------------------ the restart reads each log once
def test_the_log_read_at_restart_is_handed_to_its_replica_once(tmp_path: Path) -> None:
    from derecho_actors.node.disk_state import NodeDiskState, saved_state
    from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy, compute_layout
    from runtime.core.view import View
    from runtime.errors import LogError

    path = tmp_path / "Doc.0.0.log"
    _write_log(path, STEPS).close()
    disk = NodeDiskState(tmp_path, "c", 1, fsync=False)
    layout = compute_layout(LayoutPolicy.of({"Doc": ShardPolicy(min_nodes=1)}), (1,))
    disk.save_view(View(2, (1,), ("n1",), layout))
    spec = spec_of(Doc)
    saved = saved_state(disk, [spec], None, False)  # without keep: read and closed
    assert saved is not None and saved.logs == {ShardId("Doc", 0, 0): make_version(2, len(STEPS) - 1)}
    assert disk.take_log(path) is None
    saved_state(disk, [spec], None, False, keep=True)
    with pytest.raises(LogError, match="open in another process"):
        VersionedLog.open(path)  # held for its replica
    asked: list[tuple[int, int]] = []
    env = ReplicaEnv(1, lambda r: None, tmp_path / "scratch", log_path=path, fsync=False, inline_writes=True)
    env.take_log = lambda: disk.take_log(path)
    env.request_state = lambda have, digest: asked.append((have, digest))
    r = Replica(spec, env)
    r.start()  # takes the kept log, replayed meanwhile: no second read, no replay of its own
    assert r.store is not None and r.store.last_version == make_version(2, len(STEPS) - 1)
    assert disk.take_log(path) is None  # handed over once
    assert r.store.on_durable == env.report_durable and r.store.inline  # wired as its own
    again = tmp_path / "again.log"
    _write_log(again, STEPS).close()
    own = Replica(spec, ReplicaEnv(1, lambda r: None, tmp_path / "scratch", log_path=again, fsync=False))
    own.start()  # replays on its own thread: the same state
    assert own.store is not None
    assert (_fields(r.obj), r.applied, r.sessions.to_state(), r.applied_version) == (
        _fields(own.obj),
        own.applied,
        own.sessions.to_state(),
        own.applied_version,
    )
    assert (r.store.history.keys, r.store.history.values) == (own.store.history.keys, own.store.history.values)
    own.stop()
    r.stop()
    saved_state(disk, [spec], None, False, keep=True)
    disk.close_kept()  # a shard no replica took: closed with the node
    VersionedLog.open(path).close()
    saved_state(disk, [spec], None, False, keep=True)
    disk.release_unheld(View(3, (1,), ("n1",), layout))  # this node holds it: kept for its replica
    kept = disk.take_log(path)
    assert kept is not None
    kept.close()
    saved_state(disk, [spec], None, False, keep=True)
    others = compute_layout(LayoutPolicy.of({"Doc": ShardPolicy(min_nodes=1, max_nodes=1)}), (2, 1))
    assert others.members_of(ShardId("Doc", 0, 0)) == (2,)
    disk.release_unheld(View(3, (2, 1), ("n2", "n1"), others))  # another node holds it: let go
    assert disk.take_log(path) is None
    VersionedLog.open(path).close()

"""Restarting a replica from a log checkpoint (``derecho_actors.replica.checkpoint``) gives
exactly what replaying the whole log gives: the fields, the history index (reads of the past),
the exactly-once table and the count of applied calls, from whichever checkpoint the log
holds; and a checkpoint the log no longer matches (a log replaced by a state transfer, cut
below it, or of another version of the class) is never used."""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest

import derecho_actors as da
from derecho_actors.model.decorators import TypeSpec, spec_of
from derecho_actors.model.fields import persistent_fields
from derecho_actors.replica.messages import StatePart
from derecho_actors.replica.replica import Replica, ReplicaEnv
from derecho_actors.replica.sessions import SessionTable
from derecho_actors.replica.state import object_state
from derecho_actors.replica.store import PersistentStore
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import ChunkKind
from runtime.core.versions import format_version, make_version
from runtime.drivers import log_checkpoint
from runtime.drivers.log_store import VersionedLog

pytestmark = pytest.mark.timeout(60)


@da.replicated
class Ledger:
    m = da.Persistent({})
    n = da.Persistent(0)
    tags = da.Persistent({"seed": (1, 2)})  # a default entry that is never logged unless changed
    note = da.Persistent(None)

    @da.p2p
    def read(self) -> int:
        return self.n


def _step(rng: random.Random, obj: Any) -> None:
    r = rng.random()
    key: Any = rng.choice(["a", "b", "c", ("t", 1), 7])
    if r < 0.4:
        obj.m[key] = rng.choice([1, b"x", [1, 2], {"k": "v"}, None])
    elif r < 0.5:
        obj.m.pop(key, None)
    elif r < 0.55:
        obj.m = {"fresh": rng.randrange(9)}
    elif r < 0.7:
        obj.n = rng.randrange(100)
    elif r < 0.8:
        obj.tags[rng.choice(["seed", "x"])] = rng.randrange(3)
    elif r < 0.85:
        obj.tags.pop("seed", None)
    elif r < 0.95:
        obj.note = rng.choice(["s", 3, None, [1, "two"]])
    # else: a call that changes nothing (a read-only ordered call) still gets a record


def _write(path: Path, calls: int, seed: int, every: int) -> PersistentStore:
    """Run ``calls`` random calls (one version each, across two views) as a replica does,
    checkpointing every ``every`` records."""
    rng = random.Random(seed)
    obj = Ledger()
    store = PersistentStore(
        obj,
        persistent_fields(Ledger),
        "msgpack",
        VersionedLog.open(path, fsync=False),
        lambda v: None,
        inline=True,
        replayed=SessionTable(),
        checkpoint_every=every,
    )
    store.reset_tracking()
    batch = []
    for i in range(calls):
        _step(rng, obj)
        origin = rng.choice([0, 11, 12, 13])  # 0: a member's own call, outside the table
        version = make_version(2 if i < calls // 2 else 3, i)
        batch.append(store.record(version, 1000 + i, origin, 100 + i))
        if rng.random() < 0.3:
            store.submit(batch)
            batch = []
    store.submit(batch)
    return store


def _start(path: Path) -> Replica:
    env = ReplicaEnv(1, lambda replies: None, path.parent / "scratch", log_path=path, fsync=False, inline_writes=True)
    r = Replica(_spec(), env)
    r.start()
    return r


def _spec() -> TypeSpec:
    spec = spec_of(Ledger)
    assert spec is not None
    return spec


def _state(r: Replica) -> tuple[Any, ...]:
    store = r.store
    assert store is not None
    obj = r.obj
    h = store.history
    return (
        dict(obj.m),
        obj.n,
        dict(obj.tags),
        obj.note,
        h.values,
        h.keys,
        h.replaced,
        r.applied,
        r.sessions.to_state(),
        r.applied_version,
        store.last_version,
        store.last_ts,
    )


def _without_checkpoint(path: Path) -> tuple[Any, ...]:
    ckpt = log_checkpoint.checkpoint_path(path)
    aside = ckpt.with_name("aside")
    if ckpt.exists():
        ckpt.rename(aside)
    r = _start(path)
    want = _state(r)
    r.stop()
    if aside.exists():
        aside.rename(ckpt)
    return want


@pytest.mark.parametrize("seed", range(6))
def test_a_replica_from_a_checkpoint_equals_one_from_the_whole_log(
    tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "Ledger.0.0.log"
    rng = random.Random(seed)
    _write(path, rng.randrange(40, 120), seed, every=rng.choice([1, 5, 16])).close()
    assert log_checkpoint.checkpoint_path(path).exists()
    want = _without_checkpoint(path)
    with VersionedLog.open(path, fsync=False) as lg:  # a checkpoint at each of these versions
        positions = sorted({lg._versions[0], lg._versions[len(lg) // 2], lg.last_version})
    for version in positions:
        payload = _payload_at(path, version)
        with VersionedLog.open(path, fsync=False) as lg:
            lg.write_checkpoint(version, payload)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="derecho.replica"):
            r = _start(path)
        assert f"a checkpoint at version {format_version(version)}" in caplog.text  # it was used
        assert r.store is not None and r.store.last_version == want[-2]
        assert _state(r) == want, f"checkpoint at {version}"
        r.stop()


def _payload_at(path: Path, version: int) -> bytes:
    """The payload a store that applied exactly the records up to ``version`` writes: a
    replay of a copy of those records."""
    from derecho_actors.replica import checkpoint as _checkpoint

    prefix = path.with_name(f"prefix-{version}.log")
    with VersionedLog.open(path, fsync=False) as src:
        records = [r for r in src.iter_from(-1) if r[0] <= version]
    table = SessionTable()
    store = PersistentStore(
        Ledger(), persistent_fields(Ledger), "msgpack", VersionedLog.open(prefix, fsync=False), lambda v: None
    )
    store.replayed = table
    with store.log_held() as lg:
        lg.append(records)
        lg.flush()
    for _batch in store.replay():
        pass
    data = _checkpoint.payload(
        store.obj, store.fields, "msgpack", store.history, store._baseline, table.to_state(), store._encode
    )
    store.close()
    assert data is not None
    return data


def test_reads_of_the_past_and_new_calls_after_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "Ledger.0.0.log"
    written = _write(path, 90, 1, every=10)
    expected = {v: (dict(written.snapshot(v).m), written.snapshot(v).n) for v in list(written.log._versions)[::7]}
    written.close()
    r = _start(path)
    assert r.store is not None
    r.store.frontier = r.store.last_version
    for v, (m, n) in expected.items():
        snap = r.store.snapshot(v)
        assert (dict(snap.m), snap.n) == (m, n)
    r.stop()


def test_a_checkpoint_of_a_log_a_transfer_replaced_is_not_used(tmp_path: Path) -> None:
    """The receiver's log (with a checkpoint) disagrees with the source's: the transfer
    replaces it; the replica is rebuilt from the source's records alone, and its own old
    checkpoint is gone."""
    _write(tmp_path / "src.log", 60, 2, every=8).close()
    _write(tmp_path / "dst.log", 70, 3, every=8).close()  # another history, with a checkpoint
    source = _start(tmp_path / "src.log")
    asked: list[tuple[int, int]] = []
    env = ReplicaEnv(
        1,
        lambda replies: None,
        tmp_path / "scratch-dst",
        log_path=tmp_path / "dst.log",
        fsync=False,
        inline_writes=True,
        request_state=lambda have, digest: asked.append((have, digest)),
    )
    receiver = Replica(_spec(), env, awaiting_state=True)
    receiver.start()
    assert source.store is not None
    with source.store.log_held() as log_:
        records = [list(r) for r in log_.iter_from(-1)]
    data = _codec.encode_state(object_state(source), "msgpack", "the state")
    receiver.receive(StatePart(0, ChunkKind.OBJECT, data, False, True, 2, 3))  # reset: replace the log
    receiver.receive(StatePart(1, ChunkKind.LOG, msgpack.packb(records), True, False, 2, 3))
    assert not receiver.awaiting and receiver.failed is None
    assert not log_checkpoint.checkpoint_path(tmp_path / "dst.log").exists()
    assert (dict(receiver.obj.m), receiver.obj.n, receiver.obj.note) == (
        dict(source.obj.m),
        source.obj.n,
        source.obj.note,
    )
    receiver.stop()
    source.stop()
    # Restarted, the receiver rebuilds what a full replay of its (new) log gives.
    want = _without_checkpoint(tmp_path / "dst.log")
    again = _start(tmp_path / "dst.log")
    assert _state(again) == want
    again.stop()


def _checkpoint_version(path: Path) -> int:
    found = log_checkpoint.read(log_checkpoint.checkpoint_path(path))
    assert isinstance(found, log_checkpoint.CheckpointFile)
    return found.version


def test_a_checkpoint_of_another_class_version_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "Ledger.0.0.log"
    _write(path, 50, 4, every=5).close()
    with VersionedLog.open(path, fsync=False) as lg:
        found = lg.take_checkpoint()
        assert found is not None
        body = msgpack.unpackb(found.payload, raw=False, strict_map_key=False)
        body["fields"] = ["m", "n"]  # as written by a class with other fields
        lg.write_checkpoint(found.version, msgpack.packb(body, use_bin_type=True))
    want = _without_checkpoint(path)
    r = _start(path)
    assert _state(r) == want
    r.stop()


def test_a_value_field_holding_a_dict_is_not_checkpointed(tmp_path: Path) -> None:
    path = tmp_path / "Ledger.0.0.log"
    store = _write(path, 5, 5, every=1)
    store.obj.note = {"a": 1}  # a dict in a value field: the payload could not say what a replay gives
    store.submit([store.record(make_version(3, 10), 5000, 0, 0)])
    store.submit([store.record(make_version(3, 11), 5001, 0, 0)])
    assert _checkpoint_version(path) < make_version(3, 10)
    store.close()


def _ledger_store(path: Path, every: int) -> PersistentStore:
    return PersistentStore(
        Ledger(),
        persistent_fields(Ledger),
        "msgpack",
        VersionedLog.open(path, fsync=False),
        lambda v: None,
        inline=True,
        replayed=SessionTable(),
        checkpoint_every=every,
    )


def _one_call_per_batch(store: PersistentStore, first: int, last: int) -> None:
    for i in range(first, last):
        store.obj.n = i
        store.submit([store.record(make_version(2, i), 1000 + i, 0, 100 + i)])


def test_records_replayed_at_a_restart_count_toward_the_next_checkpoint(tmp_path: Path) -> None:
    """The records a restart replays after the log's checkpoint are in no checkpoint: the
    next one is due ``checkpoint_every`` records after the last one, not after the restart,
    so the tail each restart replays stays bounded however often the node restarts."""
    path = tmp_path / "Ledger.0.0.log"
    ckpt = log_checkpoint.checkpoint_path(path)
    first = _ledger_store(path, every=20)
    first.reset_tracking()
    _one_call_per_batch(first, 0, 50)  # checkpoints after records 20 and 40: a tail of 10
    first.close()
    found = log_checkpoint.read(ckpt)
    assert isinstance(found, log_checkpoint.CheckpointFile) and found.count == 40
    second = _ledger_store(path, every=20)
    assert second.restore_checkpoint() is not None
    assert sum(len(calls) for calls in second.replay()) == 10
    _one_call_per_batch(second, 50, 60)
    found = log_checkpoint.read(ckpt)
    assert isinstance(found, log_checkpoint.CheckpointFile) and found.count == 60
    assert found.version == make_version(2, 59)
    second.close()


def _start_prebuilt(path: Path, kept: Any) -> Replica:
    env = ReplicaEnv(1, lambda replies: None, path.parent / "scratch", log_path=path, fsync=False)
    env.take_log = lambda: kept
    r = Replica(_spec(), env)
    r.start()
    return r


@pytest.mark.parametrize("seed", range(3))
def test_a_replica_rebuilt_while_the_node_restarts_equals_one_rebuilt_when_it_starts(
    tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A total restart rebuilds each replica's object from the log the node opened, on a
    thread, before the restart view makes the replica (``replica.prebuild``): the replica
    that takes it holds what rebuilding on its own gives (a whole replay, here), wired to
    its own group."""
    from derecho_actors.replica.prebuild import Prebuild

    path = tmp_path / "Ledger.0.0.log"
    _write(path, 70 + 13 * seed, seed, every=16).close()
    want = _without_checkpoint(path)
    kept = Prebuild(_spec(), VersionedLog.open(path, fsync=False))
    with caplog.at_level(logging.INFO, logger="derecho.replica"):
        r = _start_prebuilt(path, kept)
    assert "rebuilt from its log while the node restarted" in caplog.text
    assert "a checkpoint at version" in caplog.text
    assert _state(r) == want
    store = r.store
    assert store is not None and store.on_durable == r.env.report_durable and not store.inline
    r.stop()


def test_a_failed_rebuild_while_the_node_restarts_leaves_the_replica_to_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild ahead of the view that failed half-way (here: after taking the log's
    checkpoint) is not used: the replica rebuilds from the log itself and ends as it would
    have."""
    from derecho_actors.replica import prebuild

    path = tmp_path / "Ledger.0.0.log"
    _write(path, 80, 4, every=16).close()
    want = _without_checkpoint(path)

    def broken(spec: TypeSpec, log_: Any, stop: Any = None) -> Any:
        log_.take_checkpoint()
        raise OSError("simulated failure")

    monkeypatch.setattr(prebuild, "rebuild", broken)
    kept = prebuild.Prebuild(_spec(), VersionedLog.open(path, fsync=False))
    r = _start_prebuilt(path, kept)
    assert isinstance(kept.error, OSError)
    assert _state(r) == want
    r.stop()


def test_a_rebuild_nobody_takes_stops_and_lets_go_of_its_log(tmp_path: Path) -> None:
    """A node that closes before any replica took its rebuilt log (or whose view gave the
    shard to others) stops the rebuild at its next batch of records and closes the log."""
    from derecho_actors.replica import prebuild

    path = tmp_path / "Ledger.0.0.log"
    _write(path, 60, 5, every=16).close()
    stop = threading.Event()
    stop.set()
    with VersionedLog.open(path, fsync=False) as lg, pytest.raises(prebuild.Cancelled):
        prebuild.rebuild(_spec(), lg, stop)
    kept = prebuild.Prebuild(_spec(), VersionedLog.open(path, fsync=False))
    kept.close()
    VersionedLog.open(path, fsync=False).close()  # let go: the file's lock is free again

"""Persistent fields, their versioned log, and reads of past versions.

A field declared ``Persistent(default)`` on a replicated class is read and written as a plain
attribute. After each delivered ordered call the replica compares every persistent field with
its last logged value and appends one record to the shard's log: the call's version (view id
and the call's position in that view's delivery order), a timestamp taken from the message (so every replica records the same one)
and the fields that changed. Dict-valued fields log only the keys that changed.

Reads of the past go through :func:`at_version` and :func:`at_time`, which give a read-only
snapshot of *all* persistent fields at one version: one consistent cut rather than one field at
a time, and plain values stay plain values in user code. Only versions already on disk at
every replica (at or below the shard's persistence frontier) can be read, so every replica
answers a past read identically.

Record body (msgpack): ``[origin, call_id, changes]`` where ``changes`` maps a field name to
``["v", value]`` (the new value, encoded with the type's serializer) or
``["m", replaced, sets, deletes]`` for dict fields (``replaced``: the dict was assigned anew
and ``sets`` holds all of it; ``sets``/``deletes`` encoded lists of ``[key, value]`` / keys).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import msgpack

from derecho_actors.model.fields import DELETED, Persistent, TrackedDict
from derecho_actors.replica import checkpoint as _checkpoint
from derecho_actors.replica.history import FieldHistory, apply_records
from derecho_actors.replica.past import PastReads
from derecho_actors.replica.sessions import SessionTable
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.large_args import BIG_BIN
from derecho_actors.wire.large_pack import pack_large

log = logging.getLogger("derecho.persistent")


class PersistentStore(PastReads):
    """One replica's persistent state: its fields' change tracking, its log, the history index
    for reads of the past, and a writer thread that makes records durable in batches.

    The replica's actor thread calls :meth:`record` after each ordered call and :meth:`submit`
    once per delivered batch; the writer thread appends, fsyncs once for everything queued,
    and calls ``on_durable(version)``. Reads of the past come from the actor thread too.
    """

    def __init__(
        self,
        obj: Any,
        fields: Mapping[str, Persistent],
        serializer: str,
        log_: Any,  # runtime.drivers.log_store.VersionedLog
        on_durable: Callable[[int], None],
        on_signed: Callable[[int, bytes], None] | None = None,
        on_failure: Callable[[str], None] = lambda why: None,
        max_queued: int = 256,
        stall_timeout: float = 30.0,
        inline: bool = False,
        replayed: SessionTable | None = None,
        checkpoint_every: int = _checkpoint.CHECKPOINT_EVERY,
    ) -> None:
        """``on_failure(why)``: the log could not be written (disk full, I/O error): the
        replica must stop (fail-stop), since it can no longer persist what it delivers.
        ``max_queued``: delivered batches waiting for the writer at most; beyond that the
        replica waits (back-pressure) instead of buffering without bound. ``inline``: no
        writer thread; each batch is written and made durable within :meth:`submit` (the
        simulator's way: one thread, deterministic). ``replayed``: an empty session table
        of the type, kept as a replay of the log would build it, for log checkpoints
        (None: no checkpoints); one is written every ``checkpoint_every`` records or more."""
        self.obj, self.inline, self.on_failure, self.stall_timeout = obj, inline, on_failure, stall_timeout
        self.on_signed = on_signed if getattr(log_, "signed", False) else None
        self.fields, self.serializer, self.log, self.on_durable = dict(fields), serializer, log_, on_durable
        self.history = FieldHistory(self.fields)
        self.frontier = -1  # persisted at every replica of the shard (set by the group)
        self.lost: tuple[int, int] | None = None  # versions a total restart gave up (--accept-loss)
        self.last_version, self.last_ts = -1, 0
        self._baseline: dict[str, bytes] = {}
        self._lock = threading.Lock()  # the log is used by the writer and by readers
        # The hand-off to the writer thread: a C queue (no Python-level lock or condition per
        # batch on the actor thread), bounded by counting: batches put (by the actor thread
        # only) less batches taken (by the writer only). The writer notifies ``_durable``
        # after every write, which is what a full queue waits for.
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._max_queued = max(1, max_queued)
        self._put = self._taken = 0
        self.busy_since: float | None = None  # monotonic time the writer began its current write
        self._durable = threading.Condition()
        self._durable_version = -1
        self._writer: threading.Thread | None = None
        self.write_error: BaseException | None = None
        self.replayed, self.checkpoint_every = replayed, checkpoint_every
        self._calls: list[tuple[int, int, int]] = []  # recorded, not yet in ``replayed``
        # What :meth:`record` needs per call, looked up once: the fields in their order, each
        # with whether it holds a dict (its changed keys are logged), and encoders for this
        # thread alone (a ``Packer`` each for msgpack).
        self._field_kinds = [(n, isinstance(f.default, dict)) for n, f in self.fields.items()]
        self._encoder = _codec.result_encoder(serializer)
        self._pack_plain = _codec.plain_result_encoder(serializer)
        self._pack_record = msgpack.Packer(use_bin_type=True).pack
        self._since_checkpoint = 0  # records since the last checkpoint (or the start)

    @contextmanager
    def log_held(self) -> Iterator[Any]:
        """The log, held for the block against the writer thread and other readers (a state
        transfer appending to it, a signature check reading it)."""
        with self._lock:
            yield self.log

    # ------------------------------------------------------------------ startup
    def restore_checkpoint(self) -> _checkpoint.Restored | None:
        """On a fresh object, before :meth:`replay`: put back the state of the log's
        checkpoint, if it has one that still matches the log, so that :meth:`replay` applies
        only the records after it. Returns what was restored (None: replay everything)."""
        if self.replayed is None or self.last_version >= 0:
            return None
        with self._lock:
            found = self.log.take_checkpoint()
        if found is None:
            return None
        sessions = _checkpoint.restore(
            found.payload, self.obj, self.fields, self.serializer, self.history, self._decode
        )
        if sessions is None:
            return None
        self.replayed.load_state(sessions)
        self.last_version, self.last_ts = found.version, found.timestamp_ns
        return _checkpoint.Restored(found.version, found.timestamp_ns, found.count, sessions)

    def replay(self, batch_bytes: int = 1 << 20) -> Iterator[list[tuple[int, int, int]]]:
        """Bring the fields up to the end of the log, from the records after ``last_version``
        on: all of them on a fresh object at start, or only those a state transfer appended
        to a log this store had replayed already (replay is deterministic and in order, so
        the object ends as a full replay would leave it). Yields, per batch of records read
        together, each logged call's ``(origin, call_id, timestamp_ns)``, so the replica can
        rebuild its exactly-once table a batch at a time.

        The records are applied by :func:`~derecho_actors.replica.history.apply_records`."""
        decode = _codec.result_decoder(self.serializer)
        batches = self.log.iter_batches(self.last_version, batch_bytes)
        while True:
            with self._lock:  # per batch: a reader (a transfer, a check) may take turns
                records = next(batches, None)
            if records is None:
                break
            if not records:
                continue
            calls = apply_records(records, self.obj, self.fields, self.history, decode)
            self.last_version, self.last_ts = records[-1][0], records[-1][1]
            self._since_checkpoint += len(records)  # in no checkpoint: the next one counts them
            if self.replayed is not None:
                self.replayed.replayed_batch(calls)
            yield calls
        self.reset_tracking()
        self._durable_version = self.last_version

    def reset_tracking(self) -> None:
        """Take the current field values as the baseline (after construction or replay)."""
        for name in self.fields:
            value = getattr(self.obj, name)
            if isinstance(value, TrackedDict):
                value._changed.clear()
                value._replaced = False
            else:
                self._baseline[name] = self._encode(value)

    # ------------------------------------------------------------------ writing
    def record(self, version: int, ts: int, origin: int, call_id: int) -> tuple[int, int, bytes]:
        """The log record of the call just applied at ``version``. Runs once per ordered call
        (the persistent mode's main per-version cost), so what it needs is looked up once in
        ``__init__`` and a dict field is read from the object's ``__dict__``."""
        changes: dict[str, Any] = {}
        large = False  # a change of BIG_BIN bytes or more: the record is laid out (``large_pack``)
        encode, keys, obj = self._fast_encode, self.history.keys, self.obj
        d = obj.__dict__
        for name, is_dict in self._field_kinds:
            value = d.get(name) if is_dict else None
            if type(value) is not TrackedDict:
                value = getattr(obj, name)
                if not isinstance(value, TrackedDict):
                    enc = self._encode(value)
                    if enc != self._baseline.get(name):
                        large = large or len(enc) >= BIG_BIN
                        changes[name] = ["v", enc]
                        self._baseline[name] = enc
                        self.history.note_value(name, version)
                    continue
            changed = value._changed
            if value._replaced:
                changes[name] = ["m", True, encode([[k, v] for k, v in value.items()]), b""]
                large = large or len(changes[name][2]) >= BIG_BIN
                self.history.note_keys(name, version, value, True)
                value._replaced = False
            elif not changed:
                continue
            else:
                if len(changed) == 1:  # a put's or a delete's: one key, no lists made (the same bytes)
                    ((k, v),) = changed.items()
                    if v is DELETED:
                        change: list[Any] = ["m", False, b"", encode([k])]
                    else:  # a list of lists is never laid out (``result_packer``): one C call
                        try:
                            change = ["m", False, self._pack_plain([[k, v]]), b""]
                        except Exception:  # what msgpack cannot pack: ``encode`` says why
                            change = ["m", False, encode([[k, v]]), b""]
                else:
                    sets = [[k, v] for k, v in changed.items() if v is not DELETED]
                    dels = [k for k, v in changed.items() if v is DELETED] if len(sets) < len(changed) else None
                    change = ["m", False, encode(sets) if sets else b"", encode(dels) if dels else b""]
                changes[name] = change
                large = large or len(change[2]) >= BIG_BIN or len(change[3]) >= BIG_BIN
                index = keys.get(name)
                if index is None:
                    index = keys.setdefault(name, {})
                for k in changed:  # FieldHistory.note_keys, inlined
                    seen = index.get(k)
                    if seen is None:
                        index[k] = [version]
                    else:
                        seen.append(version)
            changed.clear()
        if ts < self.last_ts:
            ts = self.last_ts
        self.last_version, self.last_ts = version, ts
        if origin and self.replayed is not None:
            self._calls.append((origin, call_id, ts))
        record = [origin, call_id, changes]
        if large:  # msgpack would copy the large value holding the GIL (the node's loop waiting)
            packed = pack_large(record, self._pack_record)
            if packed is not None:
                return version, ts, packed
        return version, ts, self._pack_record(record)

    def _fast_encode(self, value: Any) -> bytes:
        """``_encode`` of a list, through the replica thread's own encoder (one C call for
        msgpack); a value it cannot encode goes through ``_encode`` for its error."""
        try:
            return self._encoder(value)
        except Exception:
            return self._encode(value)

    def submit(self, records: list[tuple[int, int, bytes]]) -> None:
        """Queue a batch for the writer thread (one fsync covers all that queued meanwhile).
        Waits while ``max_queued`` batches are already waiting (a slow disk slows the
        replica); returns at once once the log has failed (the node is stopping)."""
        if not records or self.write_error is not None:
            return
        job = self._checkpoint_due(records)
        batch: list[Any] = records if job is None else [*records, job]
        if self.inline:
            self._write([batch])
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="derecho-log-writer", daemon=True)
            self._writer.start()
        if self._put - self._taken >= self._max_queued:
            with self._durable:
                while self._put - self._taken >= self._max_queued and self.write_error is None:
                    self._check_stall()
                    self._durable.wait(0.5)
            if self.write_error is not None:
                return
        self._put += 1
        self._inbox.put(batch)

    def _check_stall(self) -> None:
        """A write or fsync that hangs (a dead NFS server, a failing disk) is a storage
        failure too: after ``stall_timeout`` the replica stops rather than pile up batches."""
        since = self.busy_since
        if since is not None and time.monotonic() - since > self.stall_timeout and self.write_error is None:
            self._fail(TimeoutError(f"a write or fsync has not returned for {time.monotonic() - since:.0f} s"))

    def _write_loop(self) -> None:
        inbox = self._inbox
        while True:
            batch = inbox.get()
            if batch is None:
                return
            batches = [batch]
            stop = False
            while True:  # everything queued meanwhile goes into the same fsync
                try:
                    more = inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batches.append(more)
            self._taken += len(batches)
            if not self._write(batches) or stop:
                return

    def _checkpoint_due(self, records: list[tuple[int, int, bytes]]) -> _checkpoint.CheckpointJob | None:
        """After ``records`` (the last call applied is the last of them): a checkpoint of
        the state now, if one is due."""
        if self.replayed is None:
            return None
        self.replayed.replayed_batch(self._calls)
        self._calls = []
        self._since_checkpoint += len(records)
        if self._since_checkpoint < max(self.checkpoint_every, len(self.log) // 8):
            return None
        self._since_checkpoint = 0
        data = _checkpoint.payload(
            self.obj,
            self.fields,
            self.serializer,
            self.history,
            self._baseline,
            self.replayed.to_state(),
            self._encode,
        )
        return _checkpoint.CheckpointJob(records[-1][0], data) if data is not None else None

    def _write(self, batches: list[list[Any]]) -> bool:
        """Append and make durable (one fsync), write a checkpoint that came with them,
        then report; False once the log failed."""
        jobs = [batch.pop() for batch in batches if type(batch[-1]) is _checkpoint.CheckpointJob]
        records = batches[0] if len(batches) == 1 else [r for batch in batches for r in batch]
        signature = None
        self.busy_since = time.monotonic()
        try:
            with self._lock:
                self.log.append(records)
                durable = self.log.flush()
                if self.on_signed is not None and durable >= 0:
                    signature = self.log.signature(durable)
        except BaseException as exc:  # disk full, I/O error: fail-stop, never carry on silently
            self._fail(exc)
            return False
        finally:
            self.busy_since = None
        if jobs:
            self._write_checkpoint(jobs[-1])
        with self._durable:
            self._durable_version = durable
            self._durable.notify_all()
        self.on_durable(durable)
        if signature is not None and self.on_signed is not None:
            self.on_signed(durable, signature)
        return True

    def _write_checkpoint(self, job: _checkpoint.CheckpointJob) -> None:
        """A checkpoint only saves restart time: a failure is logged and the node goes on."""
        try:
            with self._lock:
                self.log.write_checkpoint(job.version, job.payload)
        except Exception as exc:
            log.warning("writing a checkpoint of %s failed: %s", getattr(self.log, "path", "?"), exc)

    def _fail(self, exc: BaseException) -> None:
        path = getattr(self.log, "path", "?")
        why = f"storage failure: writing the log {path} failed: {type(exc).__name__}: {exc}"
        log.error("%s; this replica stops (fail-stop): free space or fix the disk, then restart the node", why)
        self.write_error = exc
        with self._durable:
            self._durable.notify_all()
        try:
            self.on_failure(why)
        except Exception:
            log.exception("reporting the storage failure of %s failed", path)

    def wait_durable(self, version: int, timeout: float = 60.0) -> bool:
        """Block until ``version`` is on this replica's disk (used before a state transfer)."""
        with self._durable:
            return self._durable.wait_for(
                lambda: self._durable_version >= version or self.write_error is not None, timeout
            )

    @property
    def durable_version(self) -> int:
        return self._durable_version

    def close(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._inbox.put(None)
            self._writer.join(10)
            if self._writer.is_alive():
                log.error("the log writer of %s did not drain its queue within 10 s", getattr(self.log, "path", "?"))
        with self._lock:
            # After a failed write the unflushed records cannot be trusted to reach the disk;
            # trying again would only repeat the error (the node is leaving anyway).
            self.log.close(flush=self.write_error is None)

    def _encode(self, value: Any) -> bytes:
        if isinstance(value, TrackedDict):
            value = dict(value)
        return _codec.encode_result(value, self.serializer)


def log_path(data_dir: str | Path, type_name: str, subgroup: int, shard: int) -> Path:
    return Path(data_dir) / f"{type_name}.{subgroup}.{shard}.log"

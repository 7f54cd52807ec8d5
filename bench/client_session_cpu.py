"""CPU per pipelined call of a client's own work, with no sockets, threads or cluster.

A ``Client`` spends its CPU per call on four things that need no network to measure: issuing
the call (its arguments encoded, numbered, its ``QueryResults`` made), encoding its frame,
reading the contact's merged answers (``AnswerBatch``, decoded, matched and fed to the results)
and the caller's ``get``. This drives the very ``StreamingSession`` a ``Client`` drives, in
this one thread: ``--batch`` calls issued, their frame encoded, an ``AnswerBatch`` of them (as a
contact sends it: every replica answered ``None``, a ``KV.put``'s answer) fed in, then every
result read. The timings are per phase, per call, the median of ``--reps`` runs.

Why: the actor bench's client CPU per call swings with the machine's load (other processes on
2 cores, cache contention); this isolates the client's Python work, so an A/B of a change to
the caller side (``derecho_actors/caller``) reads in seconds. It leaves out what only a real
connection has: TLS, system calls, the hand-offs between the caller's and the socket thread.
The garbage collector runs as in a user's process (``--no-gc`` leaves it out). ``--persistent``:
the calls are the persistent KV example's ``put`` instead, each answered with its version (as
its value and as the version every replica reports), as a persistent type's calls are.

    python -m bench.client_session_cpu --batch 250 --rounds 400 --reps 5
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time
from typing import Any

import msgpack

from derecho_actors.caller.calls import method_requests
from derecho_actors.caller.handles import spec_checked
from derecho_actors.caller.large_calls import StreamingSession
from derecho_actors.caller.session import encode_output
from derecho_actors.wire.messages import AnswerBatch, encode
from runtime.core.layout import ShardId
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage, Welcome

PHASES = ("issue", "frame", "answers", "get")
REPLICAS = (1, 2, 3)


def run(batch: int, rounds: int, persistent: bool = False) -> dict[str, float]:
    """µs per call of each phase over ``rounds`` batches of ``batch`` calls (the first fifth
    warm-up, not counted); ``persistent``: of the persistent KV's ``put``, answered with versions."""
    from bench.ours import load_kv_example
    from bench.persistence import load_example

    spec = spec_checked(load_example("persistent_kv").PersistentKV if persistent else load_kv_example().KV)
    shard = ShardId(spec.name, 0, 0)
    session = StreamingSession(["127.0.0.1:1"], "bench", session_ns=1)
    session.next_step(0.0)
    session.connected(0.0, "127.0.0.1:1")
    session.receive_data(0.0, frame(Welcome(1 << 20, 1 << 20, 30_000, 0)))  # calls go once the contact said its limits
    make = method_requests(spec, shard, "put")
    lock = threading.Lock()  # as a Client holds its session's
    value, none = b"v" * 100, msgpack.packb(None)
    spent = dict.fromkeys(PHASES, 0.0)
    last_id = 0
    for r in range(rounds):
        t0 = time.perf_counter()
        results = []
        for i in range(batch):
            request = make((f"key-{i}", value), {}, None, None, session.max_message_size)
            with lock:
                results.append(session.call(request))
        t1 = time.perf_counter()
        with lock:
            output = session.output()
        if len(output[1]) != batch:
            raise RuntimeError(f"{len(output[1])} of {batch} calls in the frame")
        encode_output(output)
        t2 = time.perf_counter()
        if persistent:  # the version is the answer too (``put`` returns it)
            entries = tuple((last_id + i + 1, True, msgpack.packb(last_id + i), last_id + i, ()) for i in range(batch))
        else:
            entries = tuple((last_id + i + 1, True, none, -1, ()) for i in range(batch))
        answers_frame = frame(AppMessage(encode(AnswerBatch(1, REPLICAS, entries))))
        last_id += batch
        t3 = time.perf_counter()
        with lock:
            session.receive_data(0.0, answers_frame)
            answers = session.answers()
        done = answers.deliver() if answers is not None else []
        with lock:
            session.answered(done)
        t4 = time.perf_counter()
        for res in results:
            res.get(timeout=1)
        t5 = time.perf_counter()
        if len(done) != batch:
            raise RuntimeError(f"{len(done)} of {batch} calls answered")
        if r >= rounds // 5:
            for phase, t in zip(PHASES, (t1 - t0, t2 - t1, t4 - t3, t5 - t4)):
                spent[phase] += t
    counted = batch * (rounds - rounds // 5)
    return {phase: t / counted * 1e6 for phase, t in spent.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.client_session_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=250, help="calls per frame (the actor bench's: ~100-250)")
    p.add_argument("--rounds", type=int, default=400)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-gc", action="store_true", help="the garbage collector off: the Python work alone")
    p.add_argument("--persistent", action="store_true", help="a persistent type's puts, answered with versions")
    a = p.parse_args(argv)
    if a.no_gc:
        gc.disable()
    runs: list[dict[str, Any]] = [run(a.batch, a.rounds, a.persistent) for _ in range(a.reps)]
    medians = {phase: statistics.median(r[phase] for r in runs) for phase in PHASES}
    total = statistics.median(sum(r.values()) for r in runs)
    shown = ", ".join(f"{phase} {us:.3f}" for phase, us in medians.items())
    what = f"median of {a.reps}{', GC off' if a.no_gc else ''}{', persistent' if a.persistent else ''}"
    print(f"client µs per call ({what}): {shown}; total {total:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

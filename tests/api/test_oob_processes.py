"""A cloudpickle type's large arguments between real node processes, TLS on: a 100 MB
``bytearray`` (out of band: not copied into the pickle) arrives identical at every replica,
and arguments a replica keeps, a ``bytearray`` and a view of the received object (a
``PickleBuffer``-backed value), hold the same bytes after later large calls have arrived
(the receive buffer a kept view refers to is never reused under it)."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

import derecho_actors as da

pytestmark = pytest.mark.timeout(300)


class Lent:
    """Bytes pickled out of band: a replica gets a view of the object it received."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return Lent, (pickle.PickleBuffer(self.data),)


@da.replicated(serializer="cloudpickle")
class Arrays:
    def __init__(self) -> None:
        self.kept: list[Any] = []

    @da.ordered
    def keep(self, data: Any) -> tuple[str, str]:
        """Keep the argument (a bytearray, or a Lent's view) and say what arrived."""
        self.kept.append(data)
        raw = data.data if isinstance(data, Lent) else data
        return type(raw).__name__, hashlib.sha256(raw).hexdigest()

    @da.ordered
    def digest(self, data: Any) -> str:
        return hashlib.sha256(data.data if isinstance(data, Lent) else data).hexdigest()

    @da.ordered
    def kept_digests(self) -> list[str]:
        return [hashlib.sha256(d.data if isinstance(d, Lent) else d).hexdigest() for d in self.kept]


FAST = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "500"}
EVERYONE = da.Layout({Arrays: da.ShardPolicy(min_nodes=3)})


def test_large_cloudpickle_arguments_arrive_identical_and_kept_ones_stay_intact(tmp_path: Path) -> None:
    big = bytearray(os.urandom(100 << 20))
    lent = os.urandom(8 << 20)
    want_big, want_lent = hashlib.sha256(big).hexdigest(), hashlib.sha256(lent).hexdigest()
    with da.local_cluster(nodes=3, types=[Arrays], layout=EVERYONE, overrides=FAST, workdir=str(tmp_path)) as cluster:
        with cluster.new_client(contacts=[cluster.address(1)]) as client:
            arrays = client.handle(Arrays)
            assert arrays.kept_digests().wait_all(timeout=30) == {1: [], 2: [], 3: []}
            replies = arrays.keep(big).wait_all(timeout=180)
            assert replies == {n: ("bytearray", want_big) for n in (1, 2, 3)}
            del big
            replies = arrays.keep(Lent(lent)).wait_all(timeout=60)
            assert replies == {n: ("memoryview", want_lent) for n in (1, 2, 3)}
            for i in range(4):  # later objects of the same size: a buffer free for reuse gets them
                other = os.urandom(8 << 20)
                got = arrays.digest(Lent(other)).wait_all(timeout=60)
                assert set(got.values()) == {hashlib.sha256(other).hexdigest()}, i
            # And from a member (its own payload and its peers' receive buffers).
            other = bytearray(os.urandom(8 << 20))
            got = cluster.handle(Arrays).digest(other).wait_all(timeout=60)
            assert set(got.values()) == {hashlib.sha256(other).hexdigest()}
            kept = arrays.kept_digests().wait_all(timeout=30)
            assert kept == {n: [want_big, want_lent] for n in (1, 2, 3)}

"""The bench's ceiling for objects to a 3-member shard (``bench.object_ceiling``) moves the
right bytes: three real processes on loopback, TLS off and on, every receiver's digest checked
against the sender's object."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.object_ceiling import expected_digests, pipeline_rate
from bench.procs import BenchError
from runtime.security import create_ca, create_node

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("certs")
    create_ca(path, cluster="bench")
    for node_id in (1, 2, 3):
        create_node(path, node_id)
    return path


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_every_receiver_hashes_the_senders_object(tmp_path: Path, certs: Path, tls: bool) -> None:
    result = pipeline_rate(tmp_path, mb=5, rounds=2, certs=certs if tls else None, limit=60)
    assert len(result["per_receiver"]) == 2
    assert all(rate > 0 for rate in result["per_receiver"])
    assert result["MB_per_s"] == min(result["per_receiver"])


def test_expected_digests_differ_per_round() -> None:
    first, second = expected_digests(3, 2)
    assert first != second


def test_a_wrong_expectation_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.object_ceiling as oc

    monkeypatch.setattr(oc, "expected_digests", lambda mb, rounds: ["00" * 32] * rounds)
    with pytest.raises(BenchError, match="digests differ"):
        pipeline_rate(tmp_path, mb=3, rounds=1, certs=None, limit=60)

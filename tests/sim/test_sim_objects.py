"""The simulator with large objects: most seeds move some payloads as blocks (simulated
messages under the seed's delays and faults), and the checker would catch an object delivered
with the wrong bytes."""

from __future__ import annotations

import pytest

from runtime.core.smc_objects import ShardObjects
from runtime.sim import runner
from runtime.sim.objects import ObjectLoad, choose_objects

SEEDS_WITH_OBJECTS = [s for s in range(40) if choose_objects(s)[0] is not None]


def test_most_seeds_carry_objects_and_the_rest_do_not() -> None:
    assert 15 <= len(SEEDS_WITH_OBJECTS) <= 35
    for seed in range(40):
        policy, load = choose_objects(seed)
        assert (policy is None) == (load is None)
        if policy is not None and load is not None:
            assert all(size > policy.threshold for size in load.sizes)


LOADS = [  # (load, payload index, length of the payload made for the 6-byte tag "12.0.<made>")
    (ObjectLoad(3, (500,)), 0, 500),  # every third payload, the first of them large
    (ObjectLoad(3, (500,)), 1, 6),  # the others: the tag alone
    (ObjectLoad(3, (500, 900)), 3, 900),  # sizes in turn
    (ObjectLoad(1, (2,)), 0, 7),  # a size below the tag never cuts it
]


@pytest.mark.parametrize(("load", "made", "length"), LOADS)
def test_large_payloads_keep_their_tag_in_front(load: ObjectLoad, made: int, length: int) -> None:
    tag = b"12.0.%d" % made
    p = load.payload(tag, made)
    assert p.startswith(tag) and len(p) == length


@pytest.mark.parametrize("seed", SEEDS_WITH_OBJECTS[:3])
def test_seeds_with_objects_pass_under_crashes(seed: int) -> None:
    result = runner.run_seed(seed, faults="crash", messages=600)
    assert result.ok, result.violations
    assert result.params.objects is not None and result.params.config.multicast.objects is not None


def test_an_object_delivered_with_other_bytes_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted bug: receivers take an object as whole with its bytes zeroed. The delivered
    payload is then one nobody sent, and replicas disagree with its sender."""
    original = ShardObjects.complete

    def broken(self: ShardObjects, pos: int, k: int, data: memoryview) -> bool:
        return original(self, pos, k, memoryview(bytearray(len(data))))

    monkeypatch.setattr(ShardObjects, "complete", broken)
    result = runner.run_seed(SEEDS_WITH_OBJECTS[0], faults="none", messages=400)
    assert any(str(v).startswith("phantom") for v in result.violations), result.violations[:3]

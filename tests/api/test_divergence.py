"""Divergence caught at the caller: ordered replies that differ, state digests compared between
replicas, P2P methods that change state, nested calls through a Client; and the canonical
encoding digests rest on."""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, Iterator

import pytest

import derecho_actors as da
from derecho_actors.wire.digest import canonical, state_digest
from tests.api.groups import client as client_of
from tests.api.groups import running_groups

pytestmark = pytest.mark.timeout(120)

CLIENTS: list[da.Client] = []
_RUNS = itertools.count()


@da.replicated
class Drift:
    """Each replica is its own object in this process: ``id(self)`` differs between them, which
    is what a clock, a random number or a process id would do at real nodes."""

    def __init__(self) -> None:
        self.total = 0
        self.noise = 0

    @da.ordered
    def add(self, n: int) -> int:
        self.total += n
        return self.total

    @da.ordered
    def whoami(self) -> int:
        return id(self)

    @da.ordered
    def fail_at_one(self) -> int:
        if next(_RUNS) % 3 == 0:  # one replica of the three (they share this process)
            raise ValueError("only here")
        return 1

    @da.p2p
    def peek(self) -> int:
        return self.total

    @da.ordered
    def nested_client(self) -> None:
        CLIENTS[0].handle(Drift).add(1)


@da.replicated(on_divergence="warn", digest_every=2)
class Noisy:
    def __init__(self) -> None:
        self.noise = 0
        self.count = 0

    @da.ordered
    def stir(self) -> None:
        self.count += 1
        self.noise = id(self)  # the replies agree (None), the states do not

    @da.ordered
    def whoami(self) -> int:
        return id(self)

    @da.ordered
    def tick(self) -> int:
        self.count += 1
        return self.count


@da.replicated(check_p2p=True)
class Careful:
    def __init__(self) -> None:
        self.hits = 0
        self.seen: dict[str, int] = {}

    @da.ordered
    def put(self, key: str, n: int) -> None:
        self.seen[key] = n

    @da.p2p
    def read(self, key: str) -> int | None:
        return self.seen.get(key)

    @da.p2p
    def count_read(self, key: str) -> int | None:
        self.hits += 1  # a "harmless" statistic: the replica now differs from the others
        return self.seen.get(key)


@pytest.fixture(scope="module")
def groups() -> Iterator[list[da.Group]]:
    policy = da.ShardPolicy(min_nodes=3, max_nodes=3, overlapping=True)
    layout = da.Layout({Drift: policy, Noisy: policy, Careful: policy})
    with running_groups(3, [Drift, Noisy, Careful], layout, "divergence-test", 1000) as made:
        yield made


def test_differing_replies_raise_divergence_naming_replicas(groups: list[da.Group]) -> None:
    results = groups[0].handle(Drift).whoami()
    with pytest.raises(da.DivergenceError) as info:
        results.get(timeout=10)
    err = info.value
    assert sorted(n for nodes, _ in err.groups for n in nodes) == [1, 2, 3]
    assert len(err.groups) == 3
    assert "node 1" in str(err) and "node 2" in str(err) and "node 3" in str(err)
    assert "deterministic" in str(err)
    # The call was applied everywhere; the raw answers are still there for whoever wants them.
    assert set(results.wait_all(10)) == {1, 2, 3}


def test_agreeing_replies_do_not_raise(groups: list[da.Group]) -> None:
    replies = groups[1].handle(Drift).add(2).get(timeout=10)
    assert set(replies) == {1, 2, 3} and len(set(replies.values())) == 1


def test_an_error_at_some_replicas_and_a_value_at_others_is_divergence(groups: list[da.Group]) -> None:
    with pytest.raises(da.DivergenceError) as info:
        groups[0].handle(Drift).fail_at_one().get(timeout=10)
    assert "raised ValueError: only here" in str(info.value) and "returned 1" in str(info.value)
    (majority, value), (minority, error) = info.value.groups
    assert len(majority) == 2 and value == 1 and len(minority) == 1 and isinstance(error, da.RemoteError)


def test_warn_mode_logs_once_and_returns(groups: list[da.Group], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="derecho.results"):
        replies = groups[0].handle(Noisy).whoami().get(timeout=10)
    assert set(replies) == {1, 2, 3} and len(set(replies.values())) == 3
    warned = [r for r in caplog.records if "answered differently" in r.getMessage()]
    assert len(warned) == 1


def test_client_calls_compare_replies_too(groups: list[da.Group]) -> None:
    with client_of(groups) as client:
        with pytest.raises(da.DivergenceError):
            client.handle(Drift).whoami().get(timeout=10)


def _mismatches(group: da.Group) -> int:
    digests = group.status()["app"].get("digests", {})
    return sum(entry["mismatches"] for entry in digests.values())


def _compared(group: da.Group) -> int:
    digests = group.status()["app"].get("digests", {})
    return sum(entry["compared"] for entry in digests.values())


def test_state_digests_find_replicas_whose_states_differ(
    groups: list[da.Group], caplog: pytest.LogCaptureFixture
) -> None:
    noisy = groups[0].handle(Noisy)
    with caplog.at_level(logging.ERROR, logger="derecho.digest"):
        for _ in range(4):
            noisy.stir().get(timeout=10)  # replies agree: only the digests can tell
        deadline = threading.Event()
        for _ in range(100):
            if all(_mismatches(g) > 0 for g in groups):
                break
            deadline.wait(0.05)
    assert all(_mismatches(g) > 0 for g in groups), [g.status().get("app") for g in groups]
    assert any("diverge" in r.getMessage() for r in caplog.records)


def test_state_digests_agree_for_a_deterministic_type(groups: list[da.Group]) -> None:
    """``tick`` changes state deterministically: the digests of later versions compare equal
    (a mismatch count that stays put)."""
    before = [(_mismatches(g), _compared(g)) for g in groups]
    noisy = groups[1].handle(Noisy)
    for _ in range(6):
        noisy.tick().get(timeout=10)
    # stir() left ``noise`` different at every replica, so the digests still differ: the
    # count goes on rising. That is the point: divergence does not heal by itself.
    for _ in range(100):
        if all(_compared(g) > c for g, (_, c) in zip(groups, before)):
            break
        threading.Event().wait(0.05)
    assert all(_compared(g) > c for g, (_, c) in zip(groups, before))


def test_p2p_method_that_changes_state_is_reported(groups: list[da.Group], caplog: pytest.LogCaptureFixture) -> None:
    careful = groups[0].handle(Careful)
    careful.put("k", 5).get(timeout=10)
    assert careful.read("k", node=2).get(timeout=10) == {2: 5}
    with caplog.at_level(logging.ERROR, logger="derecho.replica"):
        with pytest.raises(da.P2PMutationError, match="count_read changed the replica's state at node 3"):
            careful.count_read("k", node=3).get(timeout=10)
    assert any("make count_read @ordered" in r.getMessage() for r in caplog.records)


def test_check_p2p_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DERECHO_CHECK_P2P", "1")

    @da.replicated
    class Watched:
        @da.p2p
        def read(self) -> int:
            return 1

    monkeypatch.setenv("DERECHO_CHECK_P2P", "0")

    @da.replicated
    class Unwatched:
        @da.p2p
        def read(self) -> int:
            return 1

    assert Watched.__derecho__.check_p2p and not Unwatched.__derecho__.check_p2p  # type: ignore[attr-defined]


def test_nested_call_through_a_client_is_refused(groups: list[da.Group]) -> None:
    with client_of(groups) as client:
        CLIENTS[:] = [client]
        try:
            with pytest.raises(da.RemoteError) as info:
                groups[0].handle(Drift).nested_client().get(timeout=10)
            assert info.value.remote_type == "NestedCallError"
            assert "through a Client" in info.value.remote_message
            # The replica is not blocked: the next call goes through.
            assert set(groups[1].handle(Drift).add(0).get(timeout=10)) == {1, 2, 3}
        finally:
            CLIENTS.clear()


@pytest.mark.parametrize("bad", [{"on_divergence": "ignore"}, {"digest_every": -1}, {"digest_every": 1.5}])
def test_bad_divergence_options_are_config_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(da.ConfigError):

        @da.replicated(**bad)
        class Bad:
            @da.ordered
            def f(self) -> None:
                pass


@pytest.mark.parametrize("param", ["node", "consistency", "at_version", "at_time"])
def test_method_parameters_reserved_for_call_options_are_refused(param: str) -> None:
    ns: dict[str, Any] = {}
    exec(f"def f(self, {param}): return {param}", ns)
    with pytest.raises(da.ConfigError, match=f"parameter named '{param}'"):
        da.replicated(type("Bad", (), {"f": da.p2p(ns["f"])}))


# ---------------------------------------------------------------- canonical encoding (pure)
class _Slots:
    __slots__ = ("a", "b")

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b


class _Plain:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


@pytest.mark.parametrize(
    "left, right, equal",
    [
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, True),  # insertion order does not count
        ({"x", "y", "z"}, {"z", "x", "y"}, True),
        ([1, 2], [2, 1], False),  # list order does
        ([1, 2], (1, 2), False),  # list and tuple differ
        (1, 1.0, False),
        (True, 1, False),
        (b"a", "a", False),
        ({"k": {1, 2}}, {"k": {2, 1}}, True),
        (_Plain(x=1, y={"a", "b"}), _Plain(y={"b", "a"}, x=1), True),
        (_Plain(x=1), _Plain(x=2), False),
        (_Slots(1, [1]), _Slots(1, [1]), True),
        (_Slots(1, [1]), _Slots(1, [2]), False),
        (10**30, 10**30, True),
        (10**30, 10**30 + 1, False),
    ],
)
def test_canonical_encoding(left: Any, right: Any, equal: bool) -> None:
    assert (canonical(left) == canonical(right)) is equal


def test_canonical_encoding_survives_cycles() -> None:
    a: list[Any] = [1]
    a.append(a)
    assert canonical(a) == canonical(a)


def test_state_digest_covers_object_and_fields() -> None:
    spec = Careful.__derecho__  # type: ignore[attr-defined]
    one, two = Careful(), Careful()
    one.seen = {"a": 1, "b": 2}
    two.seen = {"b": 2, "a": 1}
    assert state_digest(one, spec) == state_digest(two, spec)
    two.hits = 1
    assert state_digest(one, spec) != state_digest(two, spec)

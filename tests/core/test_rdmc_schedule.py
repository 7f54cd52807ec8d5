"""Properties of the RDMC block schedules, over n = 2..16 members and many block counts.

Each plan is replayed step by step: every receiver must end with every block exactly once, a
node may only send a block it held before the step (the root holds all from the start), and a
node sends at most one block and receives at most one block per step. Step counts are checked
against their formulas, the binomial one against the lower bound ``blocks + ceil(log2 n) - 1``,
and the per-node ``send``/``receive`` functions against the whole plan. A few small plans are
pinned as tables so that a change to the construction shows up as a readable diff.
"""

from __future__ import annotations

import functools
import math

import pytest

from runtime.core.rdmc_schedule import ScheduleKind, Transfer, schedule_for
from runtime.core.rdmc_schedule import plan as make_plan

pytestmark = pytest.mark.timeout(60)

SEQ, CHAIN, BIN = ScheduleKind.SEQUENTIAL, ScheduleKind.CHAIN, ScheduleKind.BINOMIAL
MEMBERS = range(2, 17)
BLOCK_COUNTS = (*range(1, 41), 64, 100)
# Sequential is a plain double loop and its plans grow with blocks * n: fewer counts suffice.
SEQUENTIAL_BLOCK_COUNTS = (*range(1, 10), 16, 17, 40, 100)
KIND_AND_N = [(kind, n) for kind in ScheduleKind for n in MEMBERS]
IDS = [f"{kind.value}-n{n}" for kind, n in KIND_AND_N]


plan = functools.lru_cache(maxsize=None)(make_plan)  # replay and step tests share plans


def block_counts(kind: ScheduleKind) -> tuple[int, ...]:
    return SEQUENTIAL_BLOCK_COUNTS if kind is SEQ else BLOCK_COUNTS


def expected_steps(kind: ScheduleKind, n: int, blocks: int) -> int:
    if n == 1:
        return 0
    if kind is SEQ:
        return blocks * (n - 1)
    if kind is CHAIN:
        return blocks + n - 2
    return blocks + math.ceil(math.log2(n)) - 1


def replay(kind: ScheduleKind, n: int, blocks: int) -> dict[int, list[int]]:
    """Play the plan, asserting the per-step rules; return the blocks each rank received."""
    held: list[set[int]] = [set(range(blocks))] + [set() for _ in range(n - 1)]
    received: dict[int, list[int]] = {rank: [] for rank in range(n)}
    where = f"{kind.value} n={n} blocks={blocks}"
    for step, transfers in enumerate(plan(kind, n, blocks)):
        senders = {t.sender for t in transfers}
        receivers = {t.receiver for t in transfers}
        assert len(senders) == len(transfers), f"{where} step {step}: a node sends twice: {transfers}"
        assert len(receivers) == len(transfers), f"{where} step {step}: a node receives twice: {transfers}"
        for t in transfers:
            assert t.step == step, f"{where}: {t} listed at step {step}"
            assert 0 <= t.sender < n and 0 < t.receiver < n and t.sender != t.receiver, f"{where}: {t}"
            assert 0 <= t.block < blocks, f"{where}: {t}"
            assert t.block in held[t.sender], f"{where}: {t} sends a block the sender does not hold yet"
        for t in transfers:  # usable from the next step on
            held[t.receiver].add(t.block)
            received[t.receiver].append(t.block)
    return received


# --------------------------------------------------------------------------------------------
# What every schedule must do
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "n"), KIND_AND_N, ids=IDS)
def test_every_receiver_gets_every_block_exactly_once(kind: ScheduleKind, n: int) -> None:
    for blocks in block_counts(kind):
        received = replay(kind, n, blocks)
        assert received[0] == []
        for rank in range(1, n):
            assert sorted(received[rank]) == list(range(blocks)), f"{kind.value} n={n} blocks={blocks} rank={rank}"


@pytest.mark.parametrize(("kind", "n"), KIND_AND_N, ids=IDS)
def test_step_count_matches_the_formula_and_no_step_is_idle(kind: ScheduleKind, n: int) -> None:
    schedule = schedule_for(kind)
    for blocks in block_counts(kind):
        steps = plan(kind, n, blocks)
        assert schedule.steps(n, blocks) == len(steps) == expected_steps(kind, n, blocks), (kind, n, blocks)
        assert all(steps), f"{kind.value} n={n} blocks={blocks}: a step moves nothing"


@pytest.mark.parametrize(("kind", "n"), KIND_AND_N, ids=IDS)
def test_per_node_functions_agree_with_the_plan(kind: ScheduleKind, n: int) -> None:
    schedule = schedule_for(kind)
    for blocks in (1, 2, 3, 7, 8, 9, 17):
        for step, transfers in enumerate(plan(kind, n, blocks)):
            by_sender = {t.sender: t for t in transfers}
            by_receiver = {t.receiver: t for t in transfers}
            for rank in range(n):
                sent, got = by_sender.get(rank), by_receiver.get(rank)
                assert schedule.send(rank, n, blocks, step) == sent
                assert schedule.receive(rank, n, blocks, step) == got
                both = tuple(t for t in (sent, got) if t is not None)
                assert schedule.transfers(rank, n, blocks, step) == both
        after = schedule.steps(n, blocks)
        assert all(schedule.transfers(rank, n, blocks, after) == () for rank in range(n))


@pytest.mark.parametrize("kind", list(ScheduleKind), ids=[k.value for k in ScheduleKind])
def test_a_group_of_one_has_nothing_to_send(kind: ScheduleKind) -> None:
    schedule = schedule_for(kind)
    assert schedule.kind is kind
    for blocks in (1, 5):
        assert schedule.steps(1, blocks) == 0
        assert plan(kind, 1, blocks) == ()
        assert schedule.transfers(0, 1, blocks, 0) == ()


# --------------------------------------------------------------------------------------------
# The root's link
# --------------------------------------------------------------------------------------------


def root_sends(kind: ScheduleKind, n: int, blocks: int) -> list[int]:
    return [t.block for transfers in plan(kind, n, blocks) for t in transfers if t.sender == 0]


@pytest.mark.parametrize("n", MEMBERS)
def test_binomial_root_sends_each_block_once_plus_the_last_block_tree(n: int) -> None:
    """The root sends in every cube step: ``blocks + floor(log2 n) - 1`` sends.

    Blocks ``0 .. blocks-1`` go out once each, in order, one per step; the extra
    ``floor(log2 n) - 1`` sends repeat the last block, which the root spreads as a binomial tree
    so that it arrives everywhere without a crossing step. (Exactly ``blocks`` sends by the root
    cannot reach the step lower bound for n >= 3 unless n - 1 is a power of two: the last block
    would then spread from one receiver alone.)
    """
    k = n.bit_length() - 1
    for blocks in BLOCK_COUNTS:
        sends = root_sends(BIN, n, blocks)
        assert sends == list(range(blocks)) + [blocks - 1] * (k - 1), (n, blocks)


@pytest.mark.parametrize("n", MEMBERS)
def test_chain_and_sequential_root_sends(n: int) -> None:
    for blocks in (1, 4, 13):
        assert root_sends(CHAIN, n, blocks) == list(range(blocks))
        assert root_sends(SEQ, n, blocks) == list(range(blocks)) * (n - 1)


# --------------------------------------------------------------------------------------------
# Pinned tables
# --------------------------------------------------------------------------------------------

# n = 8, blocks = 8: the step counts the report quotes, per kind.
STEPS_AT_8_BLOCKS = {
    # n: (sequential, chain, binomial)
    2: (8, 8, 8),
    3: (16, 9, 9),
    4: (24, 10, 9),
    5: (32, 11, 10),
    6: (40, 12, 10),
    7: (48, 13, 10),
    8: (56, 14, 10),
    9: (64, 15, 11),
    12: (88, 18, 11),
    15: (112, 21, 11),
    16: (120, 22, 11),
}


@pytest.mark.parametrize("n", sorted(STEPS_AT_8_BLOCKS))
def test_step_table_at_eight_blocks(n: int) -> None:
    got = tuple(schedule_for(kind).steps(n, 8) for kind in (SEQ, CHAIN, BIN))
    assert got == STEPS_AT_8_BLOCKS[n]


def table(kind: ScheduleKind, n: int, blocks: int) -> list[list[tuple[int, int, int]]]:
    """(sender, receiver, block) per step."""
    return [[(t.sender, t.receiver, t.block) for t in transfers] for transfers in plan(kind, n, blocks)]


def test_binomial_four_members_two_blocks() -> None:
    # The cube pairs along dimension 0, 1, 0: block 0 enters at 1 and crosses to 2; block 1
    # (the last) goes out from the root as a tree (to 2, then 1 hands it to 3).
    assert table(BIN, 4, 2) == [
        [(0, 1, 0)],
        [(0, 2, 1), (1, 3, 0)],
        [(0, 1, 1), (2, 3, 1), (3, 2, 0)],
    ]


def test_binomial_three_members_folds_rank_two_onto_vertex_one() -> None:
    # Ranks 1 and 2 share vertex 1: they take turns receiving from the root and each hands the
    # twin what it got; the extra last step settles what each still owes the other.
    assert table(BIN, 3, 3) == [
        [(0, 1, 0)],
        [(0, 2, 1)],
        [(0, 1, 2), (1, 2, 0)],
        [(1, 2, 2), (2, 1, 1)],
    ]


def test_chain_and_sequential_small_tables() -> None:
    assert table(CHAIN, 3, 2) == [[(0, 1, 0)], [(0, 1, 1), (1, 2, 0)], [(1, 2, 1)]]
    assert table(SEQ, 3, 2) == [[(0, 1, 0)], [(0, 1, 1)], [(0, 2, 0)], [(0, 2, 1)]]


def test_transfer_is_a_frozen_value() -> None:
    t = Transfer(step=0, sender=0, receiver=1, block=0)
    assert t == Transfer(0, 0, 1, 0) and hash(t) == hash(Transfer(0, 0, 1, 0))
    with pytest.raises(AttributeError):
        t.block = 1  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------

BAD_GROUPS = [
    (0, 1, "n \\(members\\) must be at least 1"),
    (-3, 1, "n \\(members\\) must be at least 1"),
    (4, 0, "blocks must be at least 1"),
    (4, -1, "blocks must be at least 1"),
    (True, 1, "n \\(members\\) must be an int"),
    (4, 2.0, "blocks must be an int"),
    ("4", 1, "n \\(members\\) must be an int"),
]


@pytest.mark.parametrize(("n", "blocks", "message"), BAD_GROUPS)
@pytest.mark.parametrize("kind", list(ScheduleKind), ids=[k.value for k in ScheduleKind])
def test_bad_group_sizes_raise(kind: ScheduleKind, n: object, blocks: object, message: str) -> None:
    schedule = schedule_for(kind)
    with pytest.raises(ValueError, match=message):
        schedule.steps(n, blocks)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        make_plan(kind, n, blocks)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        schedule.send(0, n, blocks, 0)  # type: ignore[arg-type]


BAD_NODES = [
    (4, 4, 0, "rank must be below n=4"),
    (-1, 4, 0, "rank must be at least 0"),
    (0, 4, -1, "step must be at least 0"),
    (1.5, 4, 0, "rank must be an int"),
    (0, 4, None, "step must be an int"),
]


@pytest.mark.parametrize(("rank", "n", "step", "message"), BAD_NODES)
@pytest.mark.parametrize("kind", list(ScheduleKind), ids=[k.value for k in ScheduleKind])
def test_bad_ranks_and_steps_raise(kind: ScheduleKind, rank: object, n: int, step: object, message: str) -> None:
    schedule = schedule_for(kind)
    for call in (schedule.send, schedule.receive, schedule.transfers):
        with pytest.raises(ValueError, match=message):
            call(rank, n, 3, step)  # type: ignore[arg-type]


def test_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="kind must be a ScheduleKind"):
        schedule_for("binomial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind must be a ScheduleKind"):
        make_plan("chain", 3, 2)  # type: ignore[arg-type]

"""Block schedules for large objects (RDMC): who sends which block to whom at each step.

An object is cut into ``blocks`` blocks and multicast from rank 0 (the root, which holds every
block from the start) to ranks ``1 .. n-1``. Time is counted in steps: in one step a node sends
at most one block and receives at most one block, so a schedule is a set of pure functions of
``(rank, n, blocks, step)`` that every member evaluates on its own and agrees on. A node may
forward a block from the step after the one in which it received it.

Three schedules, all of which deliver every block to every receiver exactly once:

- ``SEQUENTIAL``: the root sends the whole object to each receiver in turn,
  ``blocks * (n - 1)`` steps. The root's link carries ``n - 1`` copies: a baseline only.
- ``CHAIN``: a pipeline along the ranks, ``0 -> 1 -> ... -> n-1``; each node forwards a block
  the step after it got it. ``blocks + n - 2`` steps: good for few members or many blocks.
- ``BINOMIAL``: the binomial pipeline of RDMC. With ``k = floor(log2 n)`` the members are laid
  on a hypercube of ``2**k`` vertices; when ``n`` is not a power of two the ranks
  ``2**k .. n-1`` are folded onto vertices ``1 .. n - 2**k`` as twins, two nodes sharing one
  vertex. ``blocks + ceil(log2 n) - 1`` steps for every ``n >= 2``: ``blocks + log2 n - 1``
  when ``n`` is a power of two, one more otherwise. That is the least possible: the last block
  cannot leave the root before step ``blocks - 1``, and the number of its holders at most
  doubles per step. Every node sends in almost every step, so the root's link carries
  ``blocks + k - 1`` blocks (each block once, and the last block ``k`` times to start its tree).

The binomial construction (derived from the idea in the RDMC paper; the tests check it):

- At step ``t`` the vertices pair up along dimension ``j = t mod k``. Block ``b`` leaves the
  root at step ``b`` for vertex ``2**(b mod k)``, spreads as a binomial tree through the
  sub-cube of vertices with bit ``b mod k`` set during the next ``k - 1`` steps, and crosses
  into the other half at step ``b + k``. So in a pair, the vertex with bit ``j`` set sends block
  ``t - k`` (the crossing), the other one sends the newest block of its tree. Blocks past the
  last are replaced by the last one; that turns the last block's trees into one binomial tree
  from the root and saves the step its crossing would need.
- A twin vertex splits its work: one node (the receiver) takes the block arriving from the
  cube and passes the block it received before to its twin; the other node (the sender) sends
  the vertex's outgoing block. A vertex forwards a block that arrived through a tree at once,
  so the roles swap after every step in which the vertex holds bit ``j``. One extra step at the
  end lets both twins hand over the last block each still owes the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

__all__ = [
    "BinomialSchedule",
    "ChainSchedule",
    "Schedule",
    "ScheduleKind",
    "SequentialSchedule",
    "Transfer",
    "plan",
    "schedule_for",
]


class ScheduleKind(Enum):
    """Which block schedule an object travels by."""

    SEQUENTIAL = "sequential"
    CHAIN = "chain"
    BINOMIAL = "binomial"


@dataclass(frozen=True, slots=True)
class Transfer:
    """One block moving over one link in one step."""

    step: int
    sender: int
    receiver: int
    block: int


def _check_int(name: str, value: object, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")


def _check_group(n: int, blocks: int) -> None:
    _check_int("n (members)", n, 1)
    _check_int("blocks", blocks, 1)


def _check_node(rank: int, n: int, blocks: int, step: int) -> None:
    _check_group(n, blocks)
    _check_int("rank", rank, 0)
    if rank >= n:
        raise ValueError(f"rank must be below n={n}, got {rank}")
    _check_int("step", step, 0)


class Schedule(Protocol):
    """The pure functions a block schedule consists of.

    ``send`` and ``receive`` answer for one node and one step, so a node needs no global plan;
    a step at or past ``steps(n, blocks)`` has no transfers.
    """

    @property
    def kind(self) -> ScheduleKind: ...

    def steps(self, n: int, blocks: int) -> int:
        """How many steps the whole object takes to reach every member (0 when ``n == 1``)."""
        ...

    def send(self, rank: int, n: int, blocks: int, step: int) -> Transfer | None:
        """The block ``rank`` sends in ``step``, if any."""
        ...

    def receive(self, rank: int, n: int, blocks: int, step: int) -> Transfer | None:
        """The block ``rank`` receives in ``step``, if any."""
        ...

    def transfers(self, rank: int, n: int, blocks: int, step: int) -> tuple[Transfer, ...]:
        """What ``rank`` sends and receives in ``step`` (send first)."""
        ...


class _Base:
    """``transfers`` and input checks shared by the schedules; subclasses supply the rest."""

    kind: ScheduleKind

    def steps(self, n: int, blocks: int) -> int:
        _check_group(n, blocks)
        return 0 if n == 1 else self._steps(n, blocks)

    def send(self, rank: int, n: int, blocks: int, step: int) -> Transfer | None:
        _check_node(rank, n, blocks, step)
        if n == 1 or step >= self._steps(n, blocks):
            return None
        return self._send(rank, n, blocks, step)

    def receive(self, rank: int, n: int, blocks: int, step: int) -> Transfer | None:
        _check_node(rank, n, blocks, step)
        if n == 1 or rank == 0 or step >= self._steps(n, blocks):
            return None
        for sender in self._possible_senders(rank, n, blocks, step):
            transfer = self._send(sender, n, blocks, step)
            if transfer is not None and transfer.receiver == rank:
                return transfer
        return None

    def transfers(self, rank: int, n: int, blocks: int, step: int) -> tuple[Transfer, ...]:
        both = (self.send(rank, n, blocks, step), self.receive(rank, n, blocks, step))
        return tuple(t for t in both if t is not None)

    # Subclasses: n >= 2, 0 <= step < steps, inputs already checked.
    def _steps(self, n: int, blocks: int) -> int:
        raise NotImplementedError

    def _send(self, rank: int, n: int, blocks: int, step: int) -> Transfer | None:
        raise NotImplementedError

    def _possible_senders(self, rank: int, n: int, blocks: int, step: int) -> Sequence[int]:
        """Ranks that might send to ``rank`` in ``step``; ``receive`` asks each of them."""
        raise NotImplementedError


class SequentialSchedule(_Base):
    """The root sends all blocks to rank 1, then all to rank 2, and so on."""

    kind = ScheduleKind.SEQUENTIAL

    def _steps(self, n: int, blocks: int) -> int:
        return blocks * (n - 1)

    def _send(self, rank: int, n: int, blocks: int, step: int) -> Transfer | None:
        if rank != 0:
            return None
        return Transfer(step, 0, 1 + step // blocks, step % blocks)

    def _possible_senders(self, rank: int, n: int, blocks: int, step: int) -> Sequence[int]:
        return (0,)


class ChainSchedule(_Base):
    """Rank ``r`` sends block ``step - r`` to rank ``r + 1``: a pipeline along the ranks."""

    kind = ScheduleKind.CHAIN

    def _steps(self, n: int, blocks: int) -> int:
        return blocks + n - 2

    def _send(self, rank: int, n: int, blocks: int, step: int) -> Transfer | None:
        block = step - rank
        if rank == n - 1 or not 0 <= block < blocks:
            return None
        return Transfer(step, rank, rank + 1, block)

    def _possible_senders(self, rank: int, n: int, blocks: int, step: int) -> Sequence[int]:
        return (rank - 1,)


class BinomialSchedule(_Base):
    """The binomial pipeline: a hypercube of ``2**floor(log2 n)`` vertices, twins folded in."""

    kind = ScheduleKind.BINOMIAL

    def _steps(self, n: int, blocks: int) -> int:
        k = _dimension(n)
        return blocks + k - 1 + (0 if n == 1 << k else 1)

    def _send(self, rank: int, n: int, blocks: int, step: int) -> Transfer | None:
        k = _dimension(n)
        v = _vertex(rank, k)
        twin = _twin(v, n, k)
        if step == blocks + k - 1:
            # The extra last step (n not a power of two): each twin hands over what it owes.
            return None if twin is None else _hand_over(v, rank, twin, step, n, blocks, k)
        if twin is not None and rank == _cube_receiver(v, step, n, k):
            return _hand_over(v, rank, twin, step, n, blocks, k)
        # Here rank is the vertex's sender: its only node, or the twin not receiving this step.
        out = _cube_send(v, step, k, blocks - 1)
        if out is None:
            return None
        target, block = out
        return Transfer(step, rank, _cube_receiver(target, step, n, k), block)

    def _possible_senders(self, rank: int, n: int, blocks: int, step: int) -> Sequence[int]:
        k = _dimension(n)
        v = _vertex(rank, k)
        twin = _twin(v, n, k)
        out = [] if twin is None else [twin if rank == v else v]
        if step < blocks + k - 1:
            partner = v ^ (1 << (step % k))
            out.append(partner)
            partner_twin = _twin(partner, n, k)
            if partner_twin is not None:
                out.append(partner_twin)
        return out


def _dimension(n: int) -> int:
    """``floor(log2 n)``: the hypercube's dimension."""
    return n.bit_length() - 1


def _vertex(rank: int, k: int) -> int:
    """The hypercube vertex a rank sits on: ranks past ``2**k`` are twins of vertices 1, 2, ..."""
    return rank if rank < 1 << k else rank - (1 << k) + 1


def _twin(v: int, n: int, k: int) -> int | None:
    """The second rank on vertex ``v``, if ``n`` has one there (never on the root's vertex)."""
    rank = v + (1 << k) - 1
    return rank if v != 0 and rank < n else None


def _swaps(v: int, step: int, k: int) -> int:
    """How many steps before ``step`` had vertex ``v`` on the high side (bit ``step mod k`` set).

    In those steps the vertex takes a tree block it must forward at once, so its twins trade
    roles after each: the parity tells which twin receives from the cube at ``step``.
    """
    low = v & ((1 << (step % k)) - 1)
    return (step // k) * v.bit_count() + low.bit_count()


def _cube_receiver(v: int, step: int, n: int, k: int) -> int:
    """The rank on vertex ``v`` that takes blocks arriving from the cube in ``step``."""
    twin = _twin(v, n, k)
    return v if twin is None or _swaps(v, step, k) % 2 == 0 else twin


def _cube_send(v: int, step: int, k: int, last: int) -> tuple[int, int] | None:
    """Vertex ``v``'s send in the hypercube at ``step``: (target vertex, block), if any."""
    j = step % k
    target = v ^ (1 << j)
    if target == 0:  # the root holds every block
        return None
    if v >> j & 1:
        block = step - k  # the crossing of the block whose tree ran in our half
    elif v == 0:
        block = step  # a new block (the last one again, once they are all out)
    else:
        # The newest block of the tree we belong to: it entered on our next set bit above j.
        gap = next(i for i in range(1, k) if v >> ((j + i) % k) & 1)
        block = step - k + gap
    return None if block < 0 else (target, min(block, last))


def _cube_arrival(v: int, step: int, k: int, last: int) -> int | None:
    """The block vertex ``v`` receives from the cube at ``step``, if any."""
    out = _cube_send(v ^ (1 << (step % k)), step, k, last)
    return out[1] if out is not None and out[0] == v else None


def _hand_over(v: int, rank: int, twin: int, step: int, n: int, blocks: int, k: int) -> Transfer | None:
    """``rank`` passes its twin the block it received at its latest cube-receiving step.

    That block is the only one the twin lacks: each node passes what it received on at its
    next receiving step, and between its receiving steps it receives nothing from the cube.
    """
    other = twin if rank == v else v
    for earlier in range(step - 1, -1, -1):
        if _cube_receiver(v, earlier, n, k) == rank:
            block = _cube_arrival(v, earlier, k, blocks - 1)
            return None if block is None else Transfer(step, rank, other, block)
    return None


_SCHEDULES: dict[ScheduleKind, _Base] = {
    ScheduleKind.SEQUENTIAL: SequentialSchedule(),
    ScheduleKind.CHAIN: ChainSchedule(),
    ScheduleKind.BINOMIAL: BinomialSchedule(),
}


def schedule_for(kind: ScheduleKind) -> Schedule:
    """The schedule of a kind (schedules hold no state, so one instance serves everyone)."""
    if not isinstance(kind, ScheduleKind):
        raise ValueError(f"kind must be a ScheduleKind, got {kind!r}")
    return _SCHEDULES[kind]


def plan(kind: ScheduleKind, n: int, blocks: int) -> tuple[tuple[Transfer, ...], ...]:
    """Every transfer of the object, one tuple per step, ordered by sender rank.

    For drivers that want the whole picture up front and for tests; a node that only needs its
    own part calls ``send``/``receive`` of ``schedule_for(kind)`` step by step.
    """
    schedule_for(kind)
    schedule = _SCHEDULES[kind]
    total = schedule.steps(n, blocks)  # checks n and blocks once for all the steps
    per_step = []
    for step in range(total):
        sent = (schedule._send(rank, n, blocks, step) for rank in range(n))
        per_step.append(tuple(t for t in sent if t is not None))
    return tuple(per_step)

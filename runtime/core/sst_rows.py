"""What a member pushes of its SST row: plain data, kept out of the table's module.

``runtime.core.sst`` may be compiled (mypyc, see ``setup.py``); a delta arrives from peers and
is checked there field by field, so its class stays an ordinary Python class whose fields
hold whatever a peer sent until :meth:`runtime.core.sst.SST.apply_remote_row` has checked them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Value = int | tuple[int, ...] | bytes | list[Any] | None


@dataclass(frozen=True, slots=True)
class RowDelta:
    """What one push carries: the owner's rank, its push counter and the changed columns."""

    rank: int
    seq: int
    values: dict[str, Value]

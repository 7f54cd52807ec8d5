"""What a ``ClientSession`` tells its driver, as values (h11's ``_events``): its ``Phase``, the
next ``Step`` between connections (``Dial``, ``Wait``, ``Stop``; which and how long to wait:
``dialing``), and ``Disconnect`` when the connection must end."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Phase(Enum):
    DISCONNECTED = "disconnected"  # between connections: ask next_step
    DIALING = "dialing"  # a Dial is under way: connected, dial_failed or refuse comes next
    CONNECTED = "connected"  # the Hello went out; calls flow (a Welcome, or a Goodbye, comes back)
    CLOSED = "closed"  # refused, closed or given up: every call fails at once with ``error``


@dataclass(frozen=True, slots=True)
class Dial:
    """Connect to ``address`` now."""

    address: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Back off: ask ``next_step`` again at ``until``."""

    until: float


@dataclass(frozen=True, slots=True)
class Stop:
    """Nothing more to try: the session is closed; every call failed with ``error``."""

    error: Exception


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the current connection (the session already counts it as lost); ``why`` is for logs."""

    why: str


Step = Dial | Wait | Stop

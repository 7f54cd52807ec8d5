"""What user code runs inside: whether a replica is running one of its methods on this thread,
and ``da.emit`` (which records a change event while an ordered method runs).

The replica's thread sets ``handler_context`` around each user method; everything here only
reads it, so the module imports nothing else of the package: it is part of what users write.
"""

from __future__ import annotations

import threading
from typing import Any

from runtime.errors import EmitError

handler_context = threading.local()
"""Per thread: ``active`` while a replica runs a user method, and ``sink`` (an
:class:`EventSink`) while that method is an ordered one."""


def emit(value: Any) -> None:
    """Record a change event from inside an ``@ordered`` method: watchers of the shard
    (``client.watch``, ``group.watch``) receive ``value`` with the call's version, in order.
    ``value`` is encoded with the type's serializer at once (later changes to it do not count).

    Call it only from ordered methods: they run at every replica in the same order, so every
    replica records the same events. From anywhere else it raises ``EmitError``."""
    sink = getattr(handler_context, "sink", None)
    if sink is None:
        raise EmitError(
            "da.emit() records a change of replicated state, so it may only be called from inside an @ordered "
            "method while it runs (a @p2p method runs at one replica and changes nothing); move the call there"
        )
    sink.emit(value)


def in_handler() -> bool:
    """True on a replica's thread while it runs a user method (nested calls are refused).

    Read through the thread's own ``__dict__``: ``getattr(handler_context, "active", False)``
    raises and catches an ``AttributeError`` inside on every thread that never ran a method (a
    client's, every call): ~0.45 µs against ~0.06 µs."""
    return handler_context.__dict__.get("active", False)

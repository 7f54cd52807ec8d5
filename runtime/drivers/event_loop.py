"""Which event loop a node runs on: asyncio's, or uvloop's when asked for and allowed."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable, Coroutine, TypeVar

log = logging.getLogger("derecho.node")

T = TypeVar("T")


def loop_factory(tls: bool = False) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop if ``DERECHO_UVLOOP=1`` and it is installed; ``None``: asyncio's.

    Opt-in: measured on loopback (``python -m bench.multicast``), uvloop neither raised
    throughput nor lowered CPU per message (the loop's own overhead is small next to a
    batch's), and its millisecond timers make sub-millisecond pacing spin. Not with TLS:
    TLS connections run on ``runtime.drivers.tls_stream`` (a ``BufferedProtocol``), which has
    been measured and tested on asyncio's loop only; asyncio is used then, with a warning.
    """
    if os.environ.get("DERECHO_UVLOOP", "") not in ("1", "true", "yes"):
        return None
    if tls:
        log.warning("DERECHO_UVLOOP=1 is ignored with TLS on: running on asyncio's loop")
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_loop(main: Coroutine[Any, Any, T], tls: bool = False) -> T:
    """``asyncio.run(main)``, on uvloop when asked for (see :func:`loop_factory`)."""
    factory = loop_factory(tls)
    if factory is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)

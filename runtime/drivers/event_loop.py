"""Which event loop a node runs on: asyncio's, or uvloop's when asked for and allowed."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import selectors
from typing import Any, Callable, Coroutine, TypeVar

log = logging.getLogger("derecho.node")

T = TypeVar("T")

# Waits shorter than this are timed to the microsecond (see :func:`sharpen_timers`); longer
# ones keep epoll's millisecond (at most 1 ms late on 20 ms and more: 5%).
FINE_WAIT_BELOW = 0.02

# select()'s descriptor limit (FD_SETSIZE): an epoll descriptor above it cannot be waited on so.
_SELECT_FD_LIMIT = 1024


def sharpen_timers(loop: asyncio.AbstractEventLoop) -> bool:
    """Make ``loop``'s timers fire on time, not up to a millisecond late; True if it did.

    asyncio sleeps in ``epoll_wait``, whose timeout is in whole milliseconds, rounded up: a
    timer due in 0.3 ms (a paced app's next tick, the core's next null message or lazy push)
    fires after 1 ms, on average half a millisecond late, which at low rate is a third of a
    message's latency. For waits under ``FINE_WAIT_BELOW`` the loop's epoll descriptor
    itself is waited on with ``select()`` (microseconds), and epoll is read without waiting
    only when it has events. A wait that ends on an event costs one system call more; under
    load the loop rarely sleeps at all. Only asyncio's own epoll loop is changed (uvloop and
    others keep theirs).
    """
    sel = getattr(loop, "_selector", None)
    if type(sel) is not selectors.EpollSelector:
        return False
    epfd = sel.fileno()
    if not 0 <= epfd < _SELECT_FD_LIMIT:
        return False
    coarse = sel.select
    wait = select.select
    watch = [epfd]

    def fine(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and 0 < timeout < FINE_WAIT_BELOW:
            if not wait(watch, (), (), timeout)[0]:
                return []
            timeout = 0
        return coarse(timeout)

    sel.select = fine  # type: ignore[method-assign]
    return True


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

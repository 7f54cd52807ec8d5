"""Timers of an asyncio loop that fire when they are due, not up to a millisecond later.

asyncio's selector loop sleeps in ``epoll_wait``, whose timeout is in whole milliseconds; the
standard library rounds a shorter wait up, so on an idle loop a timer due in 0.3 ms fires
after ~1.1 ms (measured: ``call_later(0.0005)`` repeated on an idle loop, period p50 1.11 ms).
A node's sub-millisecond timers are its null messages (at most one push of them per half
``null_interval``, 0.5 ms by default) and an application's own pacing; each such wait then
doubles, and under load a message waits on them between hops.

:func:`precise_timers` adds a ``timerfd`` (Linux, nanosecond resolution) to the loop's epoll
set: before a sleep shorter than ``PRECISE_BELOW`` it is armed for the exact wait, so the
kernel ends the sleep on time. The rounded-up timeout stays as the bound, so a failure of
the timer costs the old behaviour, never a hang. It costs one ``timerfd_settime`` call per
such sleep and nothing on loops that do not sleep briefly. Elsewhere (no Linux, no epoll
loop, uvloop) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import select
import selectors
import sys
from typing import Any, Callable

PRECISE_BELOW = 0.005
"""Sleeps shorter than this (seconds) end by the timer; longer ones keep epoll's rounding
(at most 1 ms on 5 ms or more)."""

_CLOCK_MONOTONIC = 1  # asyncio's clock (time.monotonic) is CLOCK_MONOTONIC on Linux


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


class _Timer:
    """One timerfd, armed for a relative wait or disarmed."""

    def __init__(self, libc: Any, fd: int) -> None:
        self.libc = libc
        self.fd = fd
        self.armed = False
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)

    def arm(self, seconds: float) -> None:
        ns = max(1, int(seconds * 1e9))  # a zero value would disarm it
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(ns, 1_000_000_000)
        self.libc.timerfd_settime(self.fd, 0, self._ref, None)
        self.armed = True

    def disarm(self) -> None:
        value = self._spec.it_value
        value.tv_sec = value.tv_nsec = 0
        self.libc.timerfd_settime(self.fd, 0, self._ref, None)
        self.armed = False


def precise_timers(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Make ``loop``'s short sleeps end on time (see the module docstring); returns the
    function that undoes it (call it on the loop's thread before the loop closes)."""
    selector = getattr(loop, "_selector", None)
    libc = _libc()
    if libc is None or not isinstance(selector, selectors.EpollSelector):
        return lambda: None
    fd = libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return lambda: None
    timer = _Timer(libc, fd)
    epoll = selector._selector  # type: ignore[attr-defined]  # the select.epoll object
    # Edge-triggered: each expiry wakes a sleeping epoll_wait once; the expiry count is never
    # read (the selector does not know this fd, so it never reports it either).
    epoll.register(fd, select.EPOLLIN | select.EPOLLET)
    select0 = selector.select
    own = "select" in vars(selector)  # wrapped on the instance already (a tracer): put it back

    def select_on_time(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and 0 < timeout < PRECISE_BELOW:
            timer.arm(timeout)
        elif timer.armed and timeout != 0:
            timer.disarm()  # a long or endless sleep: a stale expiry would only wake it early
        return select0(timeout)

    selector.select = select_on_time  # type: ignore[method-assign]

    def undo() -> None:
        if vars(selector).get("select") is select_on_time:
            if own:
                selector.select = select0  # type: ignore[method-assign]
            else:
                del selector.select
        try:
            epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # the selector closed first
        os.close(fd)

    return undo

"""The text of a user method's exception, as its error reply carries it.

Formatting a traceback costs 50-100 µs (the source lines, the 3.11 carets), ~500 times the
decode of a call: a client whose calls all fail (bad arguments sent in a loop) made every
replica spend that on each one and delayed every other caller's calls behind them. A failure
that repeats has the same stack (the same code objects at the same lines), so the stack's text
is formatted once and kept (bounded); only the last line, the exception and its message, is
formatted per call. Chained exceptions (``raise ... from``, or raised while handling another)
and exception groups are formatted whole each time: rare, and their text holds the others.
"""

from __future__ import annotations

import traceback
from types import CodeType, TracebackType
from typing import Final

MAX_KEPT: Final = 512  # distinct stacks kept; past it the cache starts again (bounded whatever callers send)
HEADER: Final = "Traceback (most recent call last):\n"

_StackKey = tuple[tuple[CodeType, int, int], ...]
_stacks: dict[_StackKey, str] = {}


def _stack_key(tb: TracebackType | None) -> _StackKey:
    key = []
    while tb is not None:
        key.append((tb.tb_frame.f_code, tb.tb_lineno, tb.tb_lasti))  # lasti: where in the line (3.11's carets)
        tb = tb.tb_next
    return tuple(key)


def error_text(exc: BaseException) -> str:
    """``traceback.format_exception(exc)`` joined, with the stack's part formatted once per
    distinct stack."""
    tb = exc.__traceback__
    chained = exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__)
    if tb is None or chained or isinstance(exc, BaseExceptionGroup):  # a group's text holds its members
        return "".join(traceback.format_exception(type(exc), exc, tb))
    key = _stack_key(tb)
    stack = _stacks.get(key)
    if stack is None:
        stack = "".join(traceback.format_tb(tb))
        if len(_stacks) >= MAX_KEPT:
            _stacks.clear()
        _stacks[key] = stack
    return HEADER + stack + "".join(traceback.format_exception_only(type(exc), exc))

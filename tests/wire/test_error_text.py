"""error_text gives format_exception's text, formatting a repeated stack once."""

from __future__ import annotations

import traceback

import pytest

from derecho_actors.wire import error_text as et


def _convert(x: object) -> int:
    return int(x)  # type: ignore[call-overload]


def _deep(x: object, depth: int) -> int:
    return _convert(x) if depth == 0 else _deep(x, depth - 1)


def _chained(x: object) -> int:
    try:
        return _convert(x)
    except ValueError as e:
        raise KeyError("wrapped") from e


def _context(x: object) -> int:
    try:
        return _convert(x)
    except ValueError:
        raise KeyError("while handling")  # noqa: B904 - the implicit context is what is tested


def _two_places(a: object, b: object) -> int:
    return a.x + b.y  # type: ignore[attr-defined]  # one line, two places to fail


class _X:
    x = 1


def _group(x: object) -> int:
    raise ExceptionGroup("many", [ValueError(str(x)), KeyError(x)])


def _caught(fn, *args):  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("no exception")


CASES = [
    ("plain", lambda: _caught(_convert, "abc")),
    ("deep", lambda: _caught(_deep, "xyz", 5)),
    ("cause", lambda: _caught(_chained, "abc")),
    ("context", lambda: _caught(_context, "abc")),
    ("no traceback", lambda: ValueError("never raised")),
    ("multi-line message", lambda: _caught(_convert, "a\nb")),
    ("same line, first place", lambda: _caught(_two_places, None, None)),
    ("same line, second place", lambda: _caught(_two_places, _X(), None)),
    ("exception group", lambda: _caught(_group, 3)),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name,make", CASES, ids=[c[0] for c in CASES])
def test_same_text_as_format_exception(name: str, make) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):  # the second time from the cache
        exc = make()
        assert et.error_text(exc) == "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


@pytest.mark.timeout(10)
def test_a_repeated_stack_is_formatted_once_and_the_message_is_each_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    et._stacks.clear()
    calls = []
    real = traceback.format_tb
    monkeypatch.setattr(traceback, "format_tb", lambda tb: calls.append(1) or real(tb))
    texts = [et.error_text(_caught(_convert, f"v{i}")) for i in range(50)]
    assert len(calls) == 1
    assert all(text.endswith(f"'v{i}'\n") for i, text in enumerate(texts))


@pytest.mark.timeout(10)
def test_the_kept_stacks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(et, "MAX_KEPT", 3)
    et._stacks.clear()
    for depth in range(10):
        et.error_text(_caught(_deep, "q", depth))
        assert len(et._stacks) <= 3

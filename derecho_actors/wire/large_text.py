"""A large ``str`` encoded to UTF-8, or decoded from it, a mebibyte at a time.

Why: msgpack encodes and decodes a ``str`` in one C call that holds the GIL throughout:
measured at 100 MB, 60-65 ms decoding, 85-320 ms packing (as a replica's result), during which
every other thread of the process waited, the node's or the client's loop first. Text cannot be
copied as bytes are (``large_args``): it must be checked and converted. Done in steps instead,
each a C call of about a millisecond, the GIL is offered to the other threads between them (the
interpreter hands it over every few milliseconds to a thread that waits).

Decoding: an incremental UTF-8 decoder takes the bytes a ``CHUNK`` at a time (a character split
between chunks is held over, invalid bytes raise as a whole decode does), and the pieces are
copied into one new ``str`` of the right width (``PyUnicode_New``, then
``PyUnicode_CopyCharacters`` per piece, before anything else can see it): the value ``str``
gives, as compact as CPython makes it. Not CPython: :data:`WORKS` is false and msgpack decodes.
"""

from __future__ import annotations

import codecs
import ctypes
import sys
from typing import Final

__all__ = ["CHUNK", "WORKS", "decode_text", "encode_text"]

CHUNK: Final = 1 << 20
"""Bytes decoded, or characters encoded, per step (about a millisecond each)."""

_WIDEST = {1: 0xFF, 2: 0xFFFF, 4: 0x10FFFF}  # a compact str's bytes per character -> its widest


def encode_text(text: str) -> list[bytes]:
    """``text.encode()`` (strict: a lone surrogate raises ``UnicodeEncodeError``, as msgpack
    does), in pieces of ``CHUNK`` characters whose concatenation it is."""
    return [text[i : i + CHUNK].encode() for i in range(0, len(text), CHUNK)]


def decode_text(data: memoryview) -> str:
    """``str(data, "utf-8")`` (strict), decoded a ``CHUNK`` at a time and joined without one
    long copy holding the GIL."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    pieces = [decoder.decode(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    pieces.append(decoder.decode(b"", True))  # raises on a character cut short at the end
    width = max((_width(p) for p in pieces if not p.isascii()), default=0)
    out = _new_str(sum(map(len, pieces)), _WIDEST[width] if width else 0x7F)
    at = 0
    for piece in pieces:
        if piece:
            _copy_chars(id(out), at, piece, 0, len(piece))  # ~1 ms each: the GIL goes around between
            at += len(piece)
    return out


# A compact non-ASCII str's size less its characters and terminator, read off a str made here
# (a one-character latin-1 str is a shared singleton, whose size grows once anything caches its
# UTF-8 form, as msgpack's packer does).
_NON_ASCII_HEAD = sys.getsizeof(bytes((0xC3, 0xA9, 0xC3, 0xA9)).decode()) - 3


def _width(piece: str) -> int:
    """Bytes per character of a compact non-ASCII ``str`` (1, 2 or 4). A decoded piece of two
    or more characters is new, so nothing has cached its UTF-8 form; one character may be a
    shared singleton: its code point says."""
    if len(piece) == 1:
        c = ord(piece)
        return 1 if c <= 0xFF else 2 if c <= 0xFFFF else 4
    return (sys.getsizeof(piece) - _NON_ASCII_HEAD) // (len(piece) + 1)


def _works() -> bool:
    """Whether ``decode_text`` gives the ``str`` a whole decode does here, checked once."""
    if sys.implementation.name != "cpython":
        return False
    try:
        for text in ("plain ascii", "caf\xe9", "\u20ac uro", "\U0001f600 \xe9 a", ""):
            raw = text.encode() * 3
            got = decode_text(memoryview(raw))
            if got != raw.decode() or sys.getsizeof(got) != sys.getsizeof(raw.decode()):
                return False
        return True
    except Exception:  # noqa: BLE001 - any failure: msgpack decodes text
        return False


_new_str = ctypes.pythonapi.PyUnicode_New
_new_str.argtypes = [ctypes.c_ssize_t, ctypes.c_uint32]
_new_str.restype = ctypes.py_object
_copy_chars = ctypes.pythonapi.PyUnicode_CopyCharacters
# The new str by address: passed as an object it would be referred to twice, and CPython copies
# only into a str nothing else refers to.
_copy_chars.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.py_object, ctypes.c_ssize_t, ctypes.c_ssize_t]
_copy_chars.restype = ctypes.c_ssize_t
WORKS: Final = _works()
"""``decode_text`` may be used: this is CPython and it decodes as a whole decode does."""

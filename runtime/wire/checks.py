"""Checks for values decoded from untrusted bytes, and the tagged-array framing every message
kind uses (``[tag, field, ...]`` in msgpack).

Shared by the engine's frames (``runtime.wire.codec``) and the actor layer's messages, which
travel inside opaque ``AppMessage`` frames: both decode bytes a peer chose, so both check
every field with the same words, and both turn garbage into a :class:`WireError` naming the
field rather than an exception from deep inside msgpack.
"""

from __future__ import annotations

import reprlib
from typing import Any, Callable, Final, Mapping

import msgpack

from runtime.core.layout import ShardId
from runtime.errors import WireError

# What msgpack returns for untrusted bytes, besides the containers walked below. Anything else
# (``msgpack.Timestamp``; ext types are refused by ``refuse_ext``) is never sent by us.
PLAIN_SCALARS: Final[frozenset[type]] = frozenset({int, float, str, bytes, bool, type(None)})

# Every exception ``msgpack.unpackb`` is known to raise on garbage: truncated input
# (OutOfData), trailing bytes (ExtraData), bad type bytes (FormatError), deep nesting
# (StackError), lengths beyond the buffer (ValueError), unhashable map keys (TypeError),
# bad UTF-8 (UnicodeDecodeError), huge ints (OverflowError).
UNPACK_ERRORS: Final = (
    msgpack.UnpackException,
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
)

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlist = 4
_short.maxdict = 4
_short.maxlevel = 2


def short(value: object) -> str:
    return _short.repr(value)


def describe(value: object) -> str:
    """Type and a short repr: enough to debug a peer, never a megabyte of payload in a log."""
    return f"{type(value).__name__} {_short.repr(value)}"


def nat(value: object, what: str) -> int:
    """A non-negative int; bools are ints to Python but never a valid id or counter."""
    if type(value) is not int or value < 0:
        raise WireError(f"{what} must be a non-negative int, got {describe(value)}")
    return value


def version_int(value: object, what: str) -> int:
    """A version or counter that may be -1 (none)."""
    if type(value) is not int or value < -1:
        raise WireError(f"{what} must be an int >= -1, got {describe(value)}")
    return value


def text(value: object, what: str) -> str:
    if type(value) is not str:
        raise WireError(f"{what} must be a str, got {describe(value)}")
    return value


def flag(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise WireError(f"{what} must be a bool, got {describe(value)}")
    return value


def blob(value: object, what: str) -> bytes:
    if type(value) is not bytes:
        raise WireError(f"{what} must be bytes, got {describe(value)}")
    return value


def check_plain(value: object, what: str) -> None:
    """Reject anything inside ``value`` that msgpack can produce but we never send.

    Iterative, so depth is bounded by msgpack's own nesting limit, not Python's recursion.
    """
    stack: list[object] = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is list:
            stack.extend(v)  # type: ignore[arg-type]
        elif t is dict:
            stack.extend(v.keys())  # type: ignore[attr-defined]
            stack.extend(v.values())  # type: ignore[attr-defined]
        elif t not in PLAIN_SCALARS:
            raise WireError(f"{what} holds a {t.__name__}, which is not part of the wire format")


def str_key_dict(value: object, what: str) -> dict[str, Any]:
    """A dict with str keys at the top level; nested values are plain msgpack data."""
    if type(value) is not dict:
        raise WireError(f"{what} must be a map, got {describe(value)}")
    for key in value:
        if type(key) is not str:
            raise WireError(f"{what} keys must be str, got {describe(key)}")
    check_plain(value, what)
    return value


_SHARD_IDS: dict[tuple[str, int, int], ShardId] = {}  # every frame names its shard: reuse the key


def shard_id(value: object, what: str) -> ShardId:
    if type(value) is not list or len(value) != 3:
        raise WireError(f"{what} must be [type_name, subgroup, shard], got {describe(value)}")
    name, subgroup, shard = value
    if type(name) is str and type(subgroup) is int and type(shard) is int:  # exact types: a
        known = _SHARD_IDS.get((name, subgroup, shard))  # bool never hits an int's entry
        if known is not None:
            return known
    sid = ShardId(text(name, f"{what}.type_name"), nat(subgroup, f"{what}.subgroup"), nat(shard, f"{what}.shard"))
    if len(_SHARD_IDS) >= 1024:  # a bounded memo, whatever peers send
        _SHARD_IDS.clear()
    _SHARD_IDS[(sid.type_name, sid.subgroup, sid.shard)] = sid
    return sid


def shard_to_wire(shard: object) -> tuple[Any, ...]:
    """A shard key as ``[type_name, subgroup, shard]``; only ``ShardId``-shaped keys travel."""
    if not (isinstance(shard, tuple) and len(shard) == 3):
        raise TypeError(f"only ShardId(type_name, subgroup, shard) keys can be sent, got {_short.repr(shard)}")
    return shard


def int_vector(value: object, what: str) -> tuple[int, ...]:
    if type(value) is not list:
        raise WireError(f"{what} must be a list of ints, got {describe(value)}")
    for item in value:
        if type(item) is not int:
            raise WireError(f"{what} must hold ints only, got {describe(item)}")
    return tuple(value)


def refuse_ext(code: int, data: bytes) -> object:
    """msgpack ext types are never sent; refusing them keeps odd objects out of the core."""
    raise ValueError(f"msgpack ext type {code} is not part of the wire format")


Decoders = Mapping[int, tuple[str, int | tuple[int, ...], Callable[[list[Any]], Any]]]
"""tag -> (name, number of fields after the tag, decoder of the whole list)"""


def decode_tagged(
    body: bytes | bytearray | memoryview,
    decoders: Decoders,
    kind: str = "frame",
    unpack: Callable[[Any], Any] | None = None,
) -> Any:
    """The message in ``body``, an msgpack array ``[tag, field, ...]`` of one of ``decoders``;
    ``unpack``: what decodes ``body`` if not msgpack as here (the same values and errors: the
    actor layer's reader of large frames, whose large values it copies without the GIL).

    Raises :class:`WireError` naming the problem (bad msgpack, unknown tag, wrong number of
    fields, or which field is wrong) for anything a valid encoder could not have produced.
    """
    try:
        if unpack is None:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=False, ext_hook=refuse_ext)
        else:
            obj = unpack(body)
    except UNPACK_ERRORS as exc:
        raise WireError(f"{kind} body is not valid msgpack ({type(exc).__name__}: {exc})") from exc
    if type(obj) is not list or not obj:
        raise WireError(f"{kind} body must be a non-empty array [tag, fields...], got {describe(obj)}")
    tag = obj[0]
    if type(tag) is not int:
        raise WireError(f"{kind} type tag must be an int, got {describe(tag)}")
    spec = decoders.get(tag)
    if spec is None:
        raise WireError(f"unknown {kind} type tag {tag} (known: {sorted(decoders)})")
    name, arity, dec = spec
    if len(obj) - 1 != arity and not (isinstance(arity, tuple) and len(obj) - 1 in arity):
        shown = " or ".join(map(str, arity)) if isinstance(arity, tuple) else arity
        raise WireError(f"{name} {kind} needs {shown} fields after the tag, got {len(obj) - 1}")
    return dec(obj)

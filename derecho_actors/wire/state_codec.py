"""Object state for state transfer: plain data only unless the type opted into pickle.

Split from ``codec`` (calls, results, errors and ordered batches); ``codec`` re-exports
:func:`encode_state` and :func:`decode_state`.
"""

from __future__ import annotations

from typing import Any

import msgpack

from derecho_actors.wire.large_args import decode_view
from derecho_actors.wire.large_pack import pack_large
from derecho_actors.wire.serializers import pack, unpack
from runtime.errors import SerializationError

# Object state for state transfer, plain data only unless the type opted into pickle: msgpack
# with three extension types so tuples, sets and frozensets come back as they went (a tuple
# used as a dict key must stay hashable). Nothing here can run code on decode.
_EXT_TUPLE, _EXT_SET, _EXT_FROZENSET = 1, 2, 3


def _state_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return msgpack.ExtType(_EXT_TUPLE, _pack_state(list(value)))
    if isinstance(value, frozenset):
        return msgpack.ExtType(_EXT_FROZENSET, _pack_state(list(value)))
    if isinstance(value, set):
        return msgpack.ExtType(_EXT_SET, _pack_state(list(value)))
    raise TypeError(f"{type(value).__name__} is not plain data")


def _state_ext(code: int, data: bytes) -> Any:
    items = _unpack_state(data)
    if code == _EXT_TUPLE:
        return tuple(items)
    if code == _EXT_SET:
        return set(items)
    if code == _EXT_FROZENSET:
        return frozenset(items)
    raise ValueError(f"unknown extension type {code} in an object state")


def _pack_state(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, strict_types=True, default=_state_default)


def _unpack_state(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_state_ext)


def _ext_of(value: Any) -> tuple[int, list[Any]] | None:
    """What ``_state_default`` makes of a tuple or set, as ``large_pack`` takes it."""
    t = type(value)
    code = _EXT_TUPLE if t is tuple else _EXT_FROZENSET if t is frozenset else _EXT_SET if t is set else None
    return None if code is None else (code, list(value))


def _large_ext(code: int, data: memoryview) -> Any:
    """``_state_ext`` for a large tuple or set, its large bins read by ``large_args`` too (any
    other code raises: ``decode_view`` then has msgpack decode the whole, which raises it)."""
    return _EXTS[code](decode_view(data, _unpack_state, _large_ext))


_EXTS = {_EXT_TUPLE: tuple, _EXT_SET: set, _EXT_FROZENSET: frozenset}


def _encode_plain(value: Any) -> bytes:
    """``_pack_state``; a state holding large ``bytes`` laid out by ``large_pack`` (copied without
    the GIL: msgpack held it 0.3-1.4 s packing a 100 MB state on the replica's thread, where the
    node's loop waited for it)."""
    laid_out = pack_large(value, _pack_state, _ext_of)
    return laid_out if laid_out is not None else _pack_state(value)


def _decode_plain(data: bytes) -> Any:
    """``_unpack_state``; a large one read by ``large_args`` (its large bins copied without the
    GIL: msgpack held it 80-210 ms decoding a 100 MB state)."""
    return decode_view(memoryview(data), _unpack_state, _large_ext)


def encode_state(value: Any, serializer: str, what: str) -> bytes:
    """An object's state for state transfer, with the type's serializer (plain data for
    msgpack types; pickle only for types that chose ``serializer="cloudpickle"``)."""
    if serializer == "cloudpickle":
        return pack(value, serializer, what)
    try:
        return _encode_plain(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"{what} is not plain data ({exc}); give the class __getstate__/__setstate__ that return and take "
            'plain data (dicts, lists, tuples, sets, str, bytes, numbers), or use @replicated(serializer="cloudpickle")'
        ) from None


def decode_state(data: bytes, serializer: str) -> Any:
    if serializer == "cloudpickle":
        return unpack(data, serializer)
    return _decode_plain(data)

"""Object state for state transfer: plain data only unless the type opted into pickle.

Split from ``codec`` (calls, results, errors and ordered batches); ``codec`` re-exports
:func:`encode_state` and :func:`decode_state`.
"""

from __future__ import annotations

from typing import Any

import msgpack

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


def encode_state(value: Any, serializer: str, what: str) -> bytes:
    """An object's state for state transfer, with the type's serializer (plain data for
    msgpack types; pickle only for types that chose ``serializer="cloudpickle"``)."""
    if serializer == "cloudpickle":
        return pack(value, serializer, what)
    try:
        return _pack_state(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"{what} is not plain data ({exc}); give the class __getstate__/__setstate__ that return and take "
            'plain data (dicts, lists, tuples, sets, str, bytes, numbers), or use @replicated(serializer="cloudpickle")'
        ) from None


def decode_state(data: bytes, serializer: str) -> Any:
    if serializer == "cloudpickle":
        return unpack(data, serializer)
    return _unpack_state(data)

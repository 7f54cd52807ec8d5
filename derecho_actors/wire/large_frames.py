"""Actor-layer frames of ``BIG_BIN`` bytes or more: packed and read with their large value
copied without the GIL.

Answers are cut into frames that each end with the one answer that made the frame large
(``answer_queue.pieces``), and both ends of such a frame run on a node's loop (or a client's
socket loop): msgpack copied a 50 MB result there in 20-40 ms holding the GIL, so every other
thread of the process waited too. ``large_pack`` and ``large_args`` give msgpack's bytes,
values and errors, with the copy of the large value done with the GIL released.
"""

from __future__ import annotations

from typing import Any

import msgpack

from derecho_actors.wire.large_args import BIG_BIN, decode_view
from derecho_actors.wire.large_pack import pack_large
from derecho_actors.wire.packing import packb
from runtime.wire.checks import refuse_ext

__all__ = ["BIG_BIN", "ends_large", "pack_answer_frame", "unpack_large_frame"]


def ends_large(entries: Any) -> bool:
    """Whether a batch of answers (``[call id, ok, value, ...]`` rows) ends with a large value:
    the one place to look, once per frame."""
    return bool(entries) and len(entries[-1][2]) >= BIG_BIN


def pack_answer_frame(fields: list[Any]) -> bytes:
    """``packb(fields)`` of an answer frame known to hold a large value, laid out by
    ``large_pack`` where it can (msgpack's packer otherwise)."""
    packed = pack_large(fields, packb)
    return packed if packed is not None else packb(fields)


def _unpack_frame(body: Any) -> Any:
    """A frame body as ``decode_tagged`` unpacks it."""
    return msgpack.unpackb(body, raw=False, strict_map_key=False, ext_hook=refuse_ext)


def unpack_large_frame(body: Any) -> Any:
    """``_unpack_frame`` of a frame of ``BIG_BIN`` bytes or more, read by ``large_args``: its
    large values copied without the GIL; the values and errors are msgpack's."""
    return decode_view(memoryview(body), _unpack_frame)

"""``serializers.unpack_msgpack``, the decode of every call's arguments (at each replica) and
result (at the caller): plain ``unpackb`` first, the permissive decode for maps keyed by
other than text. Same values and same errors as ``unpackb(raw=False, strict_map_key=False)``,
table-driven."""

from __future__ import annotations

import msgpack
import pytest

from derecho_actors.wire.serializers import unpack_msgpack

pytestmark = pytest.mark.timeout(30)


def reference(data: bytes) -> object:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


VALUES = {
    "a put's arguments": [["key-1", b"v" * 100], {}],
    "keyword arguments": [[], {"key": "k", "value": b"\x00"}],
    "a result (int)": 12345,
    "None": None,
    "int map keys": {1: "one", 2: [{3: 4}]},
    "nested int keys": [["k"], {"d": {7: b"x"}}],
    "float and bool keys": {1.5: 1, True: 2},
    "bytes keys": {b"k": 1},
    "text": "héllo",
}


@pytest.mark.parametrize("value", VALUES.values(), ids=list(VALUES))
def test_values_decode_as_the_permissive_decode_does(value: object) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    assert unpack_msgpack(data) == reference(data)
    assert type(unpack_msgpack(data)) is type(reference(data))


BAD = {
    "truncated": msgpack.packb([1, 2, 3])[:-1],
    "extra bytes": msgpack.packb(1) + msgpack.packb(2),
    "empty": b"",
    "reserved byte": b"\xc1",
}


@pytest.mark.parametrize("data", BAD.values(), ids=list(BAD))
def test_bad_bytes_raise_what_the_permissive_decode_raises(data: bytes) -> None:
    with pytest.raises(Exception) as expected:
        reference(data)
    with pytest.raises(type(expected.value)):
        unpack_msgpack(data)

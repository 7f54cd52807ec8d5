"""The multicast payload of ordered calls: what decodes, and for what does not, the reason and the
calls whose callers can still be read (``codec.decode_ordered``), table-driven."""

from __future__ import annotations

import msgpack
import pytest

from derecho_actors.wire import codec as _codec
from derecho_actors.wire.codec import IdentifiedCall, PendingCall, UndecodableBatch

TS = 1_800_000_000 * 10**9


def p(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def call(caller: int, call_id: int, method: object = "put", session: int = 0, floor: int = 0) -> list[object]:
    return [caller, call_id, method, b"args", 77, session, floor, 0]


GOOD = _codec.encode_ordered([PendingCall(1, 5, "put", b"a", 9, 3, 2, 4), PendingCall(2, 6, "get", b"")], 1 << 20, TS)[
    0
]

DECODED = {
    "two calls": (GOOD, [(1, 5, "put", b"a", 9, 3, 2, 4, TS), (2, 6, "get", b"", 0, 0, 0, 0, TS)]),
    "a call of the release before (no owner)": (
        p([TS, [[1, 5, "put", b"a", 9, 3, 2]]]),
        [(1, 5, "put", b"a", 9, 3, 2, 0, TS)],
    ),
    "no calls (a stable read's sync)": (_codec.empty_ordered(TS), []),
}


@pytest.mark.parametrize("payload, calls", DECODED.values(), ids=DECODED.keys())
def test_a_batch_decodes(payload: bytes, calls: list[tuple[object, ...]]) -> None:
    assert _codec.decode_ordered(payload) == calls


BAD_UTF8 = p([TS, [call(4, 8)]]).replace(b"\xa3put", b"\xa3\xff\xfe\xfd")

UNDECODABLE = {
    # name: (payload, words of the reason, the calls identified)
    "not msgpack": (b"\xc1", "not a [time, calls] msgpack array", ()),
    "not an array": (p({"a": 1}), "not a [time, calls]", ()),
    "a time that is not an int": (p(["now", [call(1, 2)]]), "not [time, calls] but [str, list]", ()),
    "a call that is not an array": (p([TS, [5]]), "call 0 is not an array of 7 or 8 fields", ()),
    "a call of 6 fields": (p([TS, [call(1, 2)[:6]]]), "call 0 is not an array", (IdentifiedCall(1, 2, 77),)),
    "a call cut before its origin is not answered (it would reach another call)": (
        p([TS, [call(1, 2)[:4]]]),
        "call 0 is not an array",
        (),
    ),
    "a method that is not a str: every call named": (
        p([TS, [call(1, 2), call(3, 4, method=5, session=-1, floor=3)]]),
        "call 1 has a field of the wrong type",
        (IdentifiedCall(1, 2, 77), IdentifiedCall(3, 4, 77, -1, 3)),
    ),
    "cut short: the calls up to the cut": (
        GOOD[:-3],  # the second call's origin and session are cut off: whose call it is is unknown
        "not a [time, calls] msgpack array",
        (IdentifiedCall(1, 5, 9, 3, 2),),
    ),
    "cut in a call's number: the calls before it": (
        p([TS, [call(1, 2), [3, 2**40]]])[:-2],
        "incomplete input",
        (IdentifiedCall(1, 2, 77),),
    ),
    # The fields after the bad one are not read, so whose call it is stays unknown: not answered.
    "a method that is not UTF-8: not answered": (BAD_UTF8, "UnicodeDecodeError", ()),
    "a caller that is not a node": (p([TS, [call(-1, 2, method=5)]]), "call 0 has a field", ()),
    "a call number that is not an int": (p([TS, [[1, "x", "put", b"", 0, 0, 0]]]), "wrong type", ()),
}


@pytest.mark.parametrize("payload, reason, calls", UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_an_undecodable_batch_says_why_and_names_the_calls_it_can(
    payload: bytes, reason: str, calls: tuple[IdentifiedCall, ...]
) -> None:
    got = _codec.decode_ordered(payload)
    assert isinstance(got, UndecodableBatch)
    assert reason in got.reason
    assert got.calls == calls


def test_an_identified_call_of_a_decoded_one() -> None:
    """Calls refused after decoding (a lost shard's) are answered by the same rule."""
    assert IdentifiedCall.of((1, 5, "put", b"a", 9, -1, 2, 4, TS)) == IdentifiedCall(1, 5, 9, -1, 2)

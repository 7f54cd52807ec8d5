"""A joiner's incoming state (``replica.state.IncomingState``): what the object part decodes to
decides whether it is installed. A part that decodes to no state (garbled, or forged: a pickle
that returns None) fails the transfer; it is never taken for "no object part sent", which would
install an empty object in place of the group's state."""

from __future__ import annotations

import pickle
from pathlib import Path

import msgpack
import pytest

from derecho_actors.replica.messages import StatePart
from derecho_actors.replica.state import IncomingState
from derecho_actors.wire.messages import ChunkKind
from runtime.errors import StateTransferError

pytestmark = pytest.mark.timeout(30)


def part(data: bytes, final: bool = True) -> StatePart:
    return StatePart(0, ChunkKind.OBJECT, data, final, False, 1, 2)


@pytest.mark.parametrize(
    "serializer, data, installs",
    [
        ("msgpack", msgpack.packb({"attrs": {}, "version": -1}), True),
        ("msgpack", msgpack.packb(None), False),  # decodes to nil: no state
        ("msgpack", msgpack.packb([1, 2]), False),
        ("cloudpickle", pickle.dumps({"attrs": {}, "version": -1}), True),
        ("cloudpickle", pickle.dumps(None), False),  # a forged part whose pickle returns None
    ],
)
def test_only_a_state_is_installed(tmp_path: Path, serializer: str, data: bytes, installs: bool) -> None:
    incoming = IncomingState(tmp_path, "KV", serializer)
    assert not incoming.has_object
    assert incoming.take(part(data), None)  # the last chunk
    assert incoming.has_object
    if installs:
        assert incoming.object_state()["version"] == -1
    else:
        with pytest.raises(StateTransferError, match="not a state"):
            incoming.object_state()
    assert list(tmp_path.iterdir()) == []  # the scratch file is gone either way

"""Answers of replicas one release apart are one answer, not a divergence: replicas before
``ReplyForgotten`` refused a retried call applied already with a ``RuntimeError`` saying so."""

from __future__ import annotations

import pytest

from derecho_actors.caller.divergence import divergence
from runtime.errors import RemoteError, ReplyForgotten

pytestmark = pytest.mark.timeout(10)

OLD_WORDS = (
    "call 7 was applied already and its reply is no longer kept (the caller had acknowledged it, or more "
    "than the reply window followed); it was not run again"
)


@pytest.mark.parametrize(
    ("answers", "diverges"),
    [
        ({1: ReplyForgotten("x"), 2: RemoteError("RuntimeError", OLD_WORDS, "", 2)}, False),
        ({1: ReplyForgotten("x"), 2: ReplyForgotten("y")}, False),
        # The method's own RuntimeError is still its error, whatever else a replica answered.
        ({1: ReplyForgotten("x"), 2: RemoteError("RuntimeError", "disk on fire", "tb", 2)}, True),
        ({1: RemoteError("RuntimeError", OLD_WORDS, "", 1), 2: 5}, True),
    ],
)
def test_an_old_replicas_forgotten_call_agrees_with_a_new_ones(answers: dict[int, object], diverges: bool) -> None:
    assert (divergence("KV.put", answers) is not None) is diverges

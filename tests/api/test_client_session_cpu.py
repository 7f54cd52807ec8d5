"""The bench's client-work measure (``bench.client_session_cpu``) drives a real session through
whole batches: every call issued is answered by the contact's merged answers and read."""

from __future__ import annotations

import pytest

from bench.client_session_cpu import PHASES, main, run

pytestmark = pytest.mark.timeout(60)


def test_every_call_of_every_batch_is_answered_and_timed(capsys: pytest.CaptureFixture[str]) -> None:
    spent = run(batch=20, rounds=10)  # raises if a batch's calls are not all answered
    assert set(spent) == set(PHASES) and all(us > 0 for us in spent.values())
    assert main(["--batch", "5", "--rounds", "5", "--reps", "1", "--no-gc"]) == 0
    assert "client µs per call" in capsys.readouterr().out


def test_persistent_puts_are_answered_with_their_versions(capsys: pytest.CaptureFixture[str]) -> None:
    """``--persistent``: the persistent KV's puts, each answered with its version (as value and
    version), all answered (``run`` raises otherwise)."""
    spent = run(batch=20, rounds=10, persistent=True)
    assert set(spent) == set(PHASES) and all(us > 0 for us in spent.values())
    assert main(["--batch", "5", "--rounds", "5", "--reps", "1", "--persistent"]) == 0
    assert "persistent" in capsys.readouterr().out

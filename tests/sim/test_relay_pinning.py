"""The simulator catches a contact that sends a session's ordered calls two ways.

A contact outside a shard relays a client session's ordered calls to one member
(``members[origin % n]``). When a view adds a member to the shard, removes one, or makes the
contact one, that choice changes: unless the session's next call follows its unanswered one
(``ClientTable.pinned``), it can be ordered first, and the replicas then answer the earlier
call "applied already, reply no longer kept" although it never ran. The seeds long missed it:
the simulated clients sent bursts that all reached the contact before any view change and
waited for all of them, so no session ever had a call unanswered at its contact when the
shard's members changed; and that answer counted as an unknown outcome, not a violation.
"""

from __future__ import annotations

import pytest

import derecho_actors as da
from derecho_actors.model.decorators import spec_of
from derecho_actors.node.client_table import ClientTable
from derecho_actors.replica.calls import session_refusal
from derecho_actors.replica.sessions import Kind
from derecho_actors.sim.api import workload_of
from derecho_actors.sim.checks import is_forgotten
from derecho_actors.sim.params import choose_app_params
from derecho_actors.sim.simulate import SimReport
from derecho_actors.wire.codec import decode_error
from examples.kv_store import KV
from runtime.errors import RemoteError

pytestmark = pytest.mark.timeout(240)

CATCHING_SEEDS = [233, 355]
"""KV seeds under every fault in which a session's call went another way after a view change
once ``pinned`` is planted away (found by running seeds 0-599: 233, 355, 552; 51 and 161 were
until a client's resends waited for its contact's Welcome, which moved the runs' timing)."""


def kinds(report: SimReport) -> set[str]:
    return {v.invariant for r in report.failures for v in r.violations}


def test_the_answer_to_a_call_taken_as_applied_is_recognised() -> None:
    """The check reads the replicas' own refusal, by its type: a method that raises with the
    same words is the method's error (``RemoteError``), not the refusal."""
    spec = spec_of(KV)
    assert spec is not None
    refusal = decode_error(session_refusal(Kind.FORGOTTEN, spec, 7), 3)
    assert type(refusal) is da.ReplyForgotten and is_forgotten(refusal)
    assert not is_forgotten(decode_error(session_refusal(Kind.EXPIRED, spec, 7), 3))
    assert not is_forgotten(RemoteError("ValueError", "bad key", "tb", 3))
    words = "call 7 was applied already and its reply is no longer kept"
    assert not is_forgotten(RemoteError("RuntimeError", words, "Traceback ...", 3))


def test_some_seeds_leave_nodes_outside_a_shard() -> None:
    """Half the seeds cap shards so that spare nodes are contacts outside every shard (joiners
    stay spare, a spare is promoted when a member fails)."""
    workloads = [workload_of(KV)]
    caps = [choose_app_params(seed, workloads, "all", None, None) for seed in range(20)]
    capped = [p for p in caps if p.max_nodes["KV"] is not None]
    assert capped and len(capped) < len(caps)
    for p in capped:
        assert len(p.members) > p.shards["KV"] * p.max_nodes["KV"]  # type: ignore[operator]
        assert "max_nodes=" in p.describe()


def test_a_contact_that_does_not_pin_a_sessions_calls_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seeds pass as the product is, and with ``pinned`` planted away (the bug fixed in
    ``ClientTable.pinned``) the history of one of them holds a call the replicas took as
    applied although it never ran. In this process: the plant must reach the runs."""
    clean = da.simulate(KV, seeds=CATCHING_SEEDS, faults="all", stop_at_first=False)
    assert clean.ok, clean.describe()
    monkeypatch.setattr(ClientTable, "pinned", lambda self, state, shard, members: None)
    planted = da.simulate(KV, seeds=CATCHING_SEEDS, faults="all", stop_at_first=False)
    assert "call-forgotten" in kinds(planted), planted.describe()
    detail = next(str(v) for r in planted.failures for v in r.violations if v.invariant == "call-forgotten")
    assert "applied already" in detail and "KV.put" in detail

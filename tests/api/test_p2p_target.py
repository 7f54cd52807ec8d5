"""A client's P2P call with a target (``node=3``) is answered by that replica or not at all.

In CI once, ``test_faults.py::test_client_p2p_call_to_a_replica_that_dies_fails_at_once`` got
a value for a P2P call to node 3 made right after ``os.kill(pid, SIGSTOP)`` (that run did not
say which node answered). No call path lets another replica answer it (the tests below); the
test itself let node 3 answer: SIGSTOP is queued to one thread of the process (its main thread,
asleep in a node) and the group stop starts only once that thread gets a CPU; meanwhile the
node's other threads run on, and its loop and replica answer the call (``{3: 1}``: on a busy
2-core machine node 3 answered 3 calls of 150 made that way, and 0 of 200 made after every
thread of it had stopped). That test now stops node 3 with ``freeze``, which waits for that.
What is here:

- ``freeze`` leaves the process answering nothing: a request sent once it returns waits until
  SIGCONT (with ``os.kill`` alone, under load, a thread of the "stopped" process answers it);
- every path by which the call could be answered by another replica, in-process and
  deterministic (a real ``ClientSession`` against a contact's real call paths on a fake
  node): the contact relays the call to its target only; when the target leaves, the client
  gets ``ReplicaLost(applied=False)`` and the call goes to no one else; a call resent after a
  failover keeps its target and is refused, or relayed to the target only, by the new contact.
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import sys
from typing import Any

import msgpack
import pytest

from derecho_actors.caller.calls import Request
from derecho_actors.caller.results import QueryResults
from derecho_actors.caller.session import ClientSession, Dial
from derecho_actors.node.call_paths import CallPaths
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import Call, CallBatch, CallKind, ReplyBatch, ViewNotice, decode, encode
from runtime.core.view import View
from runtime.errors import ReplicaLost
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import AppMessage, Welcome
from tests.api.test_call_paths import SHARD, FakeConn, FakeHost, FakeNode, FakeSpec, one_view, paths
from tests.api.test_faults import freeze

# ------------------------------------------------------------------ SIGSTOP is not at once
ECHO = """
import socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def echo():
    while b := s.recv(1):
        s.sendall(b)
threading.Thread(target=echo, daemon=True).start()
threading.Event().wait()  # the main thread asleep, as a node's is: SIGSTOP wakes it first
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_a_frozen_process_answers_nothing_until_it_continues() -> None:
    """A request sent once ``freeze`` returned is answered only after SIGCONT (sent right
    after a bare ``os.kill(pid, SIGSTOP)`` it is answered now and then, often under load)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        proc = subprocess.Popen([sys.executable, "-c", ECHO, str(listener.getsockname()[1])])
        try:
            listener.settimeout(30)
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(10)
                conn.sendall(b"x")
                assert conn.recv(1) == b"x"
                answered = 0
                for _ in range(100):
                    freeze(proc.pid)
                    conn.sendall(b"y")
                    ready, _, _ = select.select([conn], [], [], 0.005)
                    answered += bool(ready)
                    os.kill(proc.pid, signal.SIGCONT)
                    assert conn.recv(1) == b"y"  # answered once it runs again
                assert answered == 0, f"{answered} of 100 requests answered by a frozen process"
        finally:
            proc.kill()
            proc.wait(10)


# ------------------------------------------------------------------ the call paths
def p2p(s: ClientSession, target: int) -> QueryResults:
    """The client's ``Feed.read(node=target)``."""
    return s.call(
        Request(SHARD, CallKind.METHOD, "read", msgpack.packb([[], {}]), False, target, "Feed.read", msgpack.unpackb)
    )


def calls_in(data: bytes) -> list[Call]:
    """The calls in what the client wrote."""
    out: list[Call] = []
    for item in FrameDecoder().feed(data):
        if isinstance(item, AppMessage):
            msg = decode(item.data)
            out.extend(msg.calls if isinstance(msg, CallBatch) else [msg] if isinstance(msg, Call) else [])
    return out


class Contact:
    """Node 1 as a client's contact (its real call paths on a fake node), in the view the test
    sets; what it says to the client is fed back to the client's session."""

    def __init__(self, *members: int) -> None:
        self.node, self.host = FakeNode(), FakeHost()
        self.view = one_view(*members)
        self.paths: CallPaths = paths(self.node, self.host, specs={"Feed": FakeSpec()})
        self.paths.clients.view = lambda: self.view
        self.conn = FakeConn("10.0.0.9:9")
        self.told = 0

    def take(self, data: bytes) -> list[Call]:
        calls = calls_in(data)
        for call in calls:
            self.paths.clients.take_call(self.conn, call)  # type: ignore[arg-type]
        self.node.run_all()
        return calls

    def depart(self, node: int) -> None:
        """``node`` leaves: the next view, without it."""
        before, left = self.view, one_view(*(m for m in self.view.members if m != node))
        self.view = View(before.vid + 1, left.members, left.addresses, left.layout)
        self.paths.on_view(before, self.view)
        self.node.run_all()

    def to_client(self, s: ClientSession) -> list[Any]:
        """What the contact said to the client since the last time: fed to its session, the
        answers delivered (as the drivers do); returns the messages."""
        messages = [m for conn, sent in self.node.to_clients for m in sent if conn is self.conn][self.told :]
        self.told += len(messages)
        for m in messages:
            s.receive_data(1.0, frame(AppMessage(m)))
        answers = s.answers()
        if answers is not None:
            s.answered(answers.deliver())
        return [decode(m) for m in messages]

    def relayed_to(self) -> list[int]:
        return [to for to, _ in self.node.sent]


WELCOME = frame(Welcome(4096, 8192, 30_000, 4096))  # what every contact says first


def connected(contacts: list[str]) -> tuple[ClientSession, str, bytes]:
    """A session connected and welcomed (its calls go out as made)."""
    s = ClientSession(contacts, "test", session_ns=123, rng=random.Random(7))
    step = s.next_step(0.0)
    assert isinstance(step, Dial)
    hello = s.connected(0.0, step.address)
    s.receive_data(0.0, WELCOME)
    return s, step.address, hello


def lost(results: QueryResults) -> ReplicaLost:
    with pytest.raises(ReplicaLost) as info:
        results.get(timeout=0)
    return info.value


def test_a_p2p_call_goes_to_its_target_only_and_fails_when_the_target_leaves() -> None:
    s, _, _ = connected(["a:1"])
    contact = Contact(1, 2, 3)
    r = p2p(s, 3)
    (call,) = contact.take(s.data_to_send())
    assert call.target == 3
    assert contact.relayed_to() == [3] and contact.host.told == []  # not run at the contact
    contact.depart(3)
    said = contact.to_client(s)
    assert ViewNotice in {type(m) for m in said}
    refusals = [m for m in said if isinstance(m, ReplyBatch)]
    assert [(b.node, [e[:2] for e in b.entries]) for b in refusals] == [(1, [(call.call_id, False)])]
    assert isinstance(_codec.decode_error(refusals[0].entries[0][2], 1), ReplicaLost)
    assert contact.relayed_to() == [3] and contact.host.told == []  # sent to no one else
    assert r.done() and lost(r).applied is False


def test_the_departure_alone_does_not_answer_a_p2p_call() -> None:
    """The client hears that node 3 left (``ViewNotice``) before its contact's refusal: the
    call still waits (for the refusal), and nothing else answers it."""
    s, _, _ = connected(["a:1"])
    r = p2p(s, 3)
    notice = ViewNotice(2, (1, 2), (3,))
    s.receive_data(1.0, frame(AppMessage(encode(notice))))
    answers = s.answers()
    if answers is not None:
        s.answered(answers.deliver())
    assert not r.done() and r.pending == ()
    assert [c.target for c in calls_in(s.data_to_send())] == [3]  # not sent again, nor elsewhere


@pytest.mark.parametrize("target_left_first", [True, False], ids=["view-without-3", "view-still-with-3"])
def test_a_p2p_call_resent_after_a_failover_keeps_its_target(target_left_first: bool) -> None:
    """The client's contact was node 3 itself, which died with the call: the session resends
    it to the next contact (node 1) under its number and with its target. Node 1 refuses it at
    once if node 3 has left its view, else relays it to node 3 only and refuses it when node 3
    leaves: never run at node 1 or 2."""
    s, first, _ = connected(["c:3", "a:1", "b:2"])
    assert first == "c:3"
    r = p2p(s, 3)
    (sent,) = calls_in(s.data_to_send())  # to node 3, which never answers
    s.connection_lost(0.5, "node 3 was killed")
    step = s.next_step(0.5)
    assert isinstance(step, Dial) and step.address == "a:1"
    contact = Contact(1, 2, 3)
    if target_left_first:
        contact.depart(3)
        contact.to_client(s)
    hello = s.connected(0.6, step.address)
    s.receive_data(0.6, WELCOME)  # the resent call goes once the contact said its limit
    (again,) = contact.take(hello + s.data_to_send())
    assert (again.call_id, again.target, again.ordered) == (sent.call_id, 3, False)
    if not target_left_first:
        assert contact.relayed_to() == [3]
        contact.depart(3)
    contact.to_client(s)
    assert contact.relayed_to() == ([] if target_left_first else [3]) and contact.host.told == []
    assert r.done() and lost(r).applied is False


def test_a_contact_runs_a_p2p_call_itself_only_when_it_is_the_target() -> None:
    for target, runs_here, relayed in ((1, True, []), (2, False, [2]), (0, True, [])):
        s, _, _ = connected(["a:1"])
        contact = Contact(1, 2, 3)
        p2p(s, target)
        contact.take(s.data_to_send())
        assert (bool(contact.host.told), contact.relayed_to()) == (runs_here, relayed), target

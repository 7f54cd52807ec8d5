"""Node guards without processes (issue 19): the status rate limit and shared snapshot, the
leader's frames taken only from the node asked or the last view's members, state requests
only from the shard's members (with bounded waiting requests), and the exit code and wait of
a joiner whose contacts are busy. Real processes: ``tests/load/test_node_guards.py``."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from derecho_actors.node import transfer as _transfer
from derecho_actors.node.transfer import TransferService
from derecho_actors.wire.messages import StateRequest, decode
from runtime.config import LimitsSection, NodeConfig, NodeSection
from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy, compute_layout
from runtime.core.messages import JoinReply, ViewAnnouncement
from runtime.core.view import View
from runtime.drivers.leader_word import LeaderWord
from runtime.drivers.node import NodeDriver
from runtime.drivers.node_io import NodeIO
from runtime.drivers.node_phases import BootstrapPhase, MemberPhase, RestartPhase
from runtime.drivers.node_phases.first import enter_first_phase
from runtime.drivers.restart import SavedState
from runtime.drivers.status import StatusError, StatusLimiter, StatusVerdict, fetch_status
from runtime.drivers.tcp import TransportSecurity
from runtime.drivers.transport import ContactProblem
from runtime.errors import ConfigError, WireError
from runtime.exitcodes import EXIT_CONFIG, START_FAILED, exit_code_for_stop
from runtime.wire.codec import FrameDecoder, encode, frame
from runtime.wire.codec import decode as decode_frame
from runtime.wire.control import (
    GroupRunning,
    RateLimited,
    RestartDecision,
    StatusReply,
    StatusRequest,
)

POLICY = LayoutPolicy.of({"KV": ShardPolicy(min_nodes=1)})
SID = ShardId("KV", 0, 0)
ADDR = {n: f"127.0.0.1:{7000 + n}" for n in range(1, 10)}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def view(vid: int, members: tuple[int, ...]) -> View:
    return View(vid, members, tuple(ADDR[m] for m in members), compute_layout(POLICY, members))


# ------------------------------------------------------------------------ status limiter
def test_status_limiter_burst_then_one_refusal_then_drops_then_cut() -> None:
    clock = Clock()
    lim = StatusLimiter(5.0, clock=clock)
    conn = object()
    verdicts = [lim.check(conn, "client 'a'").verdict for _ in range(10)]
    assert verdicts == [StatusVerdict.SERVE] * 10  # burst: twice the rate
    refusal = lim.check(conn, "client 'a'")
    assert refusal.verdict is StatusVerdict.REFUSE
    assert 0.15 <= refusal.retry_after <= 0.25 and "5 status requests per second" in refusal.reason
    drops = [lim.check(conn, "client 'a'").verdict for _ in range(StatusLimiter.CUT_AFTER)]
    assert set(drops) == {StatusVerdict.DROP}
    assert lim.check(conn, "client 'a'").verdict is StatusVerdict.CUT
    clock.t += refusal.retry_after + 0.01
    assert lim.check(object(), "client 'a'").verdict is StatusVerdict.SERVE  # the wait is over


def test_status_limiter_is_per_identity_and_waits_are_per_connection() -> None:
    clock = Clock()
    lim = StatusLimiter(1.0, clock=clock)
    a1, a2, b = object(), object(), object()
    assert [lim.check(a1, "A").verdict for _ in range(2)] == [StatusVerdict.SERVE] * 2
    assert lim.check(a2, "A").verdict is StatusVerdict.REFUSE  # another connection of the same identity
    assert lim.check(b, "B").verdict is StatusVerdict.SERVE  # another identity is not held back
    assert lim.refused == 1


def test_status_limiter_table_is_bounded_and_closed_connections_leave_nothing() -> None:
    clock = Clock()
    lim = StatusLimiter(5.0, max_identities=100, clock=clock)
    for i in range(1000):
        lim.check(object(), f"client {i}")
    assert len(lim) == 100
    lim = StatusLimiter(5.0, clock=clock)
    conn = object()
    for _ in range(12):
        lim.check(conn, "A")  # in debt, and refused
    lim.closed(conn, "A")
    assert len(lim) == 1 and not lim._waiting  # the debt is kept: reconnecting does not reset it
    conn2 = object()
    assert lim.check(conn2, "A").verdict is StatusVerdict.REFUSE
    clock.t += 10
    lim.closed(conn2, "A")
    assert len(lim) == 0  # refilled and no connection left: forgotten


def test_rate_limited_frame_round_trips_and_is_checked() -> None:
    msg = RateLimited(250, "at most 5 status requests per second per client")
    assert decode_frame(encode(msg)) == msg
    import msgpack

    from runtime.wire.codec import TAG_RATE_LIMITED

    with pytest.raises(WireError, match="RateLimited.retry_after_ms"):
        decode_frame(msgpack.packb([TAG_RATE_LIMITED, -1, "x"]))
    with pytest.raises(WireError, match="RateLimited.reason"):
        decode_frame(msgpack.packb([TAG_RATE_LIMITED, 5, None]))


class FakeStatusServer:
    """A plain-TCP member stand-in: answers each StatusRequest with the next scripted frames."""

    def __init__(self, script: list[list[Any]]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.script = script
        self.requests = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.sock.accept()
        dec = FrameDecoder()
        with conn:
            conn.settimeout(5)
            while self.script:
                data = conn.recv(1 << 16)
                if not data:
                    return
                for item in dec.feed(data):
                    if isinstance(item, StatusRequest) and self.script:
                        self.requests += 1
                        conn.sendall(b"".join(frame(m) for m in self.script.pop(0)))

    def close(self) -> None:
        self.sock.close()


def test_fetch_status_waits_as_told_and_asks_again() -> None:
    server = FakeStatusServer([[RateLimited(50, "at most 5 a second")], [StatusReply({"node": 1, "vid": 3})]])
    try:
        assert fetch_status(server.address, timeout=3.0) == {"node": 1, "vid": 3}
        assert server.requests == 2
    finally:
        server.close()


def test_fetch_status_names_the_limit_when_the_wait_is_too_long() -> None:
    server = FakeStatusServer([[RateLimited(60_000, "at most 5 status requests per second per client")]])
    try:
        with pytest.raises(StatusError, match="rate limiting status requests .*per client.*retry after 60.0 s"):
            fetch_status(server.address, timeout=1.0)
    finally:
        server.close()


# ------------------------------------------------------------------ driver: fake transport
class FakeHandle:
    def __init__(self, name: str) -> None:
        self.identity = None
        self.address = f"10.0.0.{name}:5000"
        self.closed = False

    def _where(self) -> str:
        return f"client at {self.address}"

    def close(self) -> None:
        self.closed = True


class FakeTransport:
    """What NodeDriver uses of a transport in these tests: replies and warnings recorded,
    the node proven at each contact address given."""

    def __init__(self, at: dict[str, int] | None = None) -> None:
        self.replies: list[tuple[Any, bytes]] = []
        self.warnings: list[str] = []
        self.at = at or {}
        self.contact_reached = False
        self.refusals: list[str] = []
        self.contact_problems: dict[str, ContactProblem] = {}
        self.bad_frames = 0
        self.sent: list[tuple[str, bytes]] = []
        self.disconnected: list[tuple[int, str]] = []

    def reply(self, handle: Any, data: bytes) -> bool:
        self.replies.append((handle, data))
        return True

    def warn(self, kind: str, address: str, msg: str, *args: Any) -> None:
        self.warnings.append(msg % args)

    def disconnect(self, node_id: int, reason: str) -> None:
        self.disconnected.append((node_id, reason))

    def contact_node(self, address: str) -> int | None:
        return self.at.get(address)

    def learn(self, node: int, address: str) -> None:
        pass

    def send_to_address(self, address: str, data: bytes) -> None:
        self.sent.append((address, data))

    def client_count(self) -> int:
        return 0

    def traffic(self) -> dict[int, tuple[int, int]]:
        return {}


TLS_FLAG = TransportSecurity(server_context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def driver(
    loop: asyncio.AbstractEventLoop,
    transport: FakeTransport,
    saved: SavedState | None = None,
    contacts: tuple[str, ...] = (ADDR[1],),
    limits: LimitsSection | None = None,
    bootstrap_expect: int = 0,
    begin: bool = False,
) -> NodeDriver:
    """A driver on ``loop`` and ``transport`` as ``run()`` sets it up, waiting for its core;
    with ``begin``, in the first phase its config gives (restart, bootstrap, join)."""
    cfg = NodeConfig(
        node=NodeSection(id=5, listen=ADDR[5], contacts=contacts, bootstrap_expect=bootstrap_expect),
        layout=POLICY,
        limits=limits or LimitsSection(),
    )
    d = NodeDriver(cfg, saved=saved, security=(TLS_FLAG, None))
    ctx = d._attach(NodeIO(loop, transport, d._flush, d._tick))  # type: ignore[arg-type]
    if begin:
        enter_first_phase(ctx)
    return d


def member(d: NodeDriver) -> MemberPhase:
    assert isinstance(d._phase, MemberPhase), d._phase
    return d._phase


def restart_phase(d: NodeDriver) -> RestartPhase:
    assert isinstance(d._phase, RestartPhase), d._phase
    return d._phase


def test_twenty_thousand_status_requests_build_one_status_and_answer_eleven(loop: asyncio.AbstractEventLoop) -> None:
    t = FakeTransport()
    d = driver(loop, t)
    builds = 0
    real = d.status

    def counting() -> dict[str, Any]:
        nonlocal builds
        builds += 1
        return real()

    d.status = counting  # type: ignore[method-assign]
    attacker = FakeHandle("66")
    for _ in range(20_000):
        if attacker.closed:
            break  # the transport stops handing frames of a closed connection
        d._on_client(attacker, StatusRequest())
    kinds = [type(decode_frame(data[4:])).__name__ for _, data in t.replies]
    assert kinds == ["StatusReply"] * 10 + ["RateLimited", "Goodbye"], kinds
    assert attacker.closed and builds == 1  # one snapshot shared by the burst
    assert any("status requests" in w for w in t.warnings)
    honest = FakeHandle("7")  # another host (identity) is served meanwhile
    d._on_client(honest, StatusRequest())
    assert type(decode_frame(t.replies[-1][1][4:])) is StatusReply
    d._on_client_closed(attacker)
    d._on_client_closed(honest)
    assert not d._status_limiter._waiting


# ------------------------------------------------------------------------ leader's word
def test_leader_word_takes_asked_nodes_and_last_view_members_only() -> None:
    at = {ADDR[1]: 1}
    word = LeaderWord(at.get)
    word.ask([ADDR[1], ADDR[2]])
    assert word.allows(1) and not word.allows(2) and not word.allows(9)
    at[ADDR[2]] = 2
    assert word.allows(2)  # reached since
    del at[ADDR[1]]
    assert word.allows(1)  # remembered once proven, though that connection closed
    word.know_view(view(4, (3, 4)))
    assert word.allows(3) and word.allows(4) and not word.allows(9)
    assert LeaderWord(at.get, enforce=False).allows(9)  # no TLS: nobody's id is proven anyway


def joining(loop: asyncio.AbstractEventLoop, t: FakeTransport) -> NodeDriver:
    d = driver(loop, t, begin=True)  # joins through its one contact
    assert d.core is not None and d.core.joining
    return d


def test_join_reply_and_view_announcement_only_from_the_node_asked(loop: asyncio.AbstractEventLoop) -> None:
    t = FakeTransport({ADDR[1]: 1})
    d = joining(loop, t)
    admitted = view(3, (1, 2, 5))
    d._on_frames(9, [JoinReply(None, "go away", final=True)])
    d._on_frames(9, [ViewAnnouncement(view(3, (5, 9)).to_wire())])
    assert d.core is not None and d.core.joining and d.core.excluded is None
    assert sum("refused a JoinReply from node 9" in w for w in t.warnings) == 1
    assert sum("refused a ViewAnnouncement from node 9" in w for w in t.warnings) == 1
    d._on_frames(2, [ViewAnnouncement(admitted.to_wire())])  # a member's copy, not asked: quietly dropped
    assert d.core.joining and len(t.warnings) == 2
    d._on_frames(1, [ViewAnnouncement(admitted.to_wire())])
    assert d.core.view == admitted


def test_final_join_reply_from_the_node_asked_stops_the_joiner(loop: asyncio.AbstractEventLoop) -> None:
    t = FakeTransport({ADDR[1]: 1})
    d = joining(loop, t)
    d._on_frames(1, [JoinReply(ADDR[2], "not the leader")])
    t.at[ADDR[2]] = 2
    d._on_frames(2, [JoinReply(None, "layout differs", final=True)])  # the leader it was sent to
    assert d.core is not None and d.core.excluded is not None and d.core.excluded.startswith("join refused")


def restarting(loop: asyncio.AbstractEventLoop, t: FakeTransport) -> NodeDriver:
    saved = SavedState(view(4, (1, 2, 5)), {SID: 10})
    d = driver(loop, t, saved=saved, begin=True)
    restart_phase(d)
    return d


def test_restart_decision_and_group_running_only_from_the_last_views_members(loop: asyncio.AbstractEventLoop) -> None:
    t = FakeTransport()
    d = restarting(loop, t)
    rogue_view = view(9, (5, 9))
    d._on_frames(9, [RestartDecision(9, rogue_view.to_wire(), ((SID, 0, 10),))])
    d._on_frames(9, [GroupRunning(ADDR[9], 12)])
    assert restart_phase(d).coordinator.outcome is None and d.core is None
    assert sum("refused a RestartDecision from node 9" in w for w in t.warnings) == 1
    assert sum("refused a GroupRunning from node 9" in w for w in t.warnings) == 1
    d._on_frames(2, [GroupRunning(ADDR[2], 7)])  # a member of its last view
    assert isinstance(d._phase, MemberPhase) and d.core is not None and d.core.joining


def test_restart_decision_from_a_member_of_the_last_view_is_installed(loop: asyncio.AbstractEventLoop) -> None:
    t = FakeTransport()
    d = restarting(loop, t)
    decided = view(5, (1, 2, 5))
    d._on_frames(1, [RestartDecision(1, decided.to_wire())])
    assert d.core is not None and d.core.view == decided


def test_a_later_view_reported_by_a_member_extends_whose_decision_counts(loop: asyncio.AbstractEventLoop) -> None:
    from runtime.drivers.restart import make_hello

    t = FakeTransport()
    d = restarting(loop, t)
    later = view(6, (1, 2, 3, 5))
    d._on_frames(9, [make_hello(9, ADDR[9], SavedState(view(8, (5, 9, 3))))])  # not trusted: changes nothing
    assert not d._leader_word.allows(3)
    d._on_frames(1, [make_hello(1, ADDR[1], SavedState(later))])
    assert d._leader_word.allows(3)


def test_bootstrap_takes_group_running_only_from_its_contacts(loop: asyncio.AbstractEventLoop) -> None:
    t = FakeTransport({ADDR[1]: 1})
    d = driver(loop, t, contacts=(ADDR[1], ADDR[2]), bootstrap_expect=3, begin=True)
    assert isinstance(d._phase, BootstrapPhase)
    d._on_frames(9, [GroupRunning(ADDR[9], 3)])
    assert isinstance(d._phase, BootstrapPhase) and d._phase.coordinator.outcome is None
    d._on_frames(1, [GroupRunning(ADDR[1], 3)])
    assert isinstance(d._phase, MemberPhase) and d.core is not None and d.core.joining


# --------------------------------------------------------------------- exit code and wait
def test_start_failures_exit_with_the_config_code() -> None:
    assert exit_code_for_stop(f"{START_FAILED}: node.contacts: no contact reachable") == EXIT_CONFIG


def test_a_busy_contact_is_waited_for_and_a_dead_one_is_not(loop: asyncio.AbstractEventLoop, caplog: Any) -> None:
    t = FakeTransport()
    d = joining(loop, t)
    t.contact_problems[ADDR[1]] = ContactProblem(True, "Connection reset by peer")
    watch = member(d).join_watch
    assert watch is not None
    with caplog.at_level(logging.WARNING, "derecho.node"):
        watch.check()
    assert d.stop_reason is None and "answers but let no handshake finish" in caplog.text
    assert "giving up after 30 s" in caplog.text
    watch.check(started=loop.time() - 31, wait=5.0)  # past the join timeout
    loop.run_until_complete(asyncio.sleep(0.01))  # stop() takes effect on the loop
    assert d.stop_reason is not None and d.stop_reason.startswith(START_FAILED)
    assert isinstance(d.error, ConfigError) and "no contact reachable" in str(d.error)
    t2 = FakeTransport()
    d2 = joining(loop, t2)
    t2.contact_problems[ADDR[1]] = ContactProblem(False, "Connection refused")
    watch2 = member(d2).join_watch
    assert watch2 is not None
    watch2.check()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert d2.stop_reason is not None and "Connection refused" in d2.stop_reason


# ------------------------------------------------------------------------ state requests
class FakeNode:
    node_id = 1

    def __init__(self) -> None:
        self.sent: list[tuple[int, Any]] = []

    def send_app(self, node: int, data: bytes) -> None:
        self.sent.append((node, decode(data)))


class FakeHost:
    def retire(self, sid: ShardId) -> None:
        pass


def service(views: dict[int, View], current: int) -> tuple[TransferService, FakeNode]:
    node = FakeNode()
    svc = TransferService(
        node,  # type: ignore[arg-type]
        FakeHost(),
        1024,
        4,
        views.get,
        lambda: views.get(current),
        lambda why, code: None,
    )
    return svc, node


def test_state_request_only_from_members_the_view_assigns_to_the_shard(tmp_path: Path, caplog: Any) -> None:
    views = {3: view(3, (1, 2)), 4: view(4, (1, 2, 3))}
    svc, node = service(views, 4)
    snap = tmp_path / "snap"
    snap.write_bytes(b"state")
    svc.snapshot_ready(SID, 4, snap, -1, None)
    with caplog.at_level(logging.WARNING, "derecho.transfer"):
        svc.on_request(9, StateRequest(SID, 4, -1, 0))  # outside the view
        svc.on_request(7, StateRequest(ShardId("Other", 0, 0), 4, -1, 0))
    assert not node.sent and not svc.streams
    assert "refused a state request of node 9" in caplog.text
    svc.on_request(3, StateRequest(SID, 4, -1, 0))
    assert [n for n, _ in node.sent] == [3] and (SID, 4, 3) in svc.streams


def test_waiting_state_requests_are_checked_when_their_view_comes(tmp_path: Path) -> None:
    views = {3: view(3, (1, 2))}
    svc, node = service(views, 3)
    svc.on_request(3, StateRequest(SID, 4, -1, 0))  # view 4 not installed here yet
    svc.on_request(9, StateRequest(SID, 4, -1, 0))
    assert svc.early_count == 2 and not node.sent
    views[4] = view(4, (1, 2, 3))
    snap = tmp_path / "snap"
    snap.write_bytes(b"state")
    svc.snapshot_ready(SID, 4, snap, -1, None)
    assert [n for n, _ in node.sent] == [3] and svc.early_count == 0


def test_waiting_state_requests_are_bounded_per_requester_and_in_all(caplog: Any) -> None:
    views = {3: view(3, (1, 2))}
    svc, node = service(views, 3)
    with caplog.at_level(logging.WARNING, "derecho.transfer"):
        for vid in range(10, 10 + 1000):
            svc.on_request(9, StateRequest(SID, vid, -1, 0))
    assert svc.early_count == _transfer.MAX_EARLY_PER_REQUESTER
    assert min(vid for _, vid in svc.early) == 10 + 1000 - _transfer.MAX_EARLY_PER_REQUESTER  # oldest dropped
    assert "dropped a waiting state request of node 9" in caplog.text
    for sender in range(100, 200):
        for vid in range(5):
            svc.on_request(sender, StateRequest(SID, 50 + vid, -1, 0))
    assert svc.early_count == _transfer.MAX_EARLY_TOTAL
    assert sum(len(v) for v in svc.early.values()) == svc.early_count
    svc.on_request(100, StateRequest(SID, 50, -1, 0))  # asked again: replaces, does not add
    assert svc.early_count == _transfer.MAX_EARLY_TOTAL
    svc.on_view(view(60, (1, 2)))
    assert svc.early_count == 0 and not svc.early


def test_a_restarting_node_says_which_contacts_are_busy(loop: asyncio.AbstractEventLoop, caplog: Any) -> None:
    t = FakeTransport()
    phase = restart_phase(restarting(loop, t))
    with caplog.at_level(logging.WARNING, "derecho.node"):
        phase.advance()
        assert "let no handshake finish" not in caplog.text  # nothing failed: nothing to say
        t.contact_problems[ADDR[1]] = ContactProblem(True, "Connection reset by peer")
        t.contact_problems[ADDR[2]] = ContactProblem(False, "Connection refused")
        phase.advance()
        phase.advance()  # once per BUSY_REPORT_EVERY, not per tick
    lines = [r.getMessage() for r in caplog.records if "let no handshake finish" in r.getMessage()]
    assert len(lines) == 1 and f"restarting: {ADDR[1]} is up" in lines[0] and ADDR[2] not in lines[0]


# ------------------------------------------------------------------------ a flood of ignored frames
def test_a_flood_of_frames_no_node_sends_logs_a_few_lines_or_closes_an_outsider(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """A node certificate is enough to send Pings on a member connection as fast as one can
    write: each used to log a WARNING (1.5M lines, 154 MB in 15 s, the loop held meanwhile)."""
    from runtime.wire.control import Ping

    t = FakeTransport()
    d = driver(loop, t, contacts=(), begin=True)  # founds view 0 of node 5 alone
    with caplog.at_level(logging.WARNING, logger="derecho.node"):
        for _ in range(100):
            d._on_frames(5, [Ping(n) for n in range(100)])  # a member: dropped, a few lines
    lines = [r for r in caplog.records if "on a member connection; ignored" in r.getMessage()]
    assert 1 <= len(lines) <= 3, len(lines)
    assert not t.disconnected
    d._on_frames(7, [Ping(n) for n in range(100)])  # outside the view: its connections close
    assert t.disconnected == [(7, "outside the view, it sent a Ping on a member connection")]


def test_app_messages_of_a_node_outside_the_view_are_bounded(loop: asyncio.AbstractEventLoop) -> None:
    """A node certificate outside the view flooded app messages (ReplyBatch frames for no call,
    garbage): each was decoded and handled, the loop stalled and the node fell out of its group."""
    from runtime.drivers.node_phases import outsiders
    from runtime.wire.control import AppMessage

    t = FakeTransport()
    d = driver(loop, t, contacts=(), begin=True)  # founds view 0 of node 5 alone
    phase = member(d)
    assert phase.core.view is not None and phase.core.view.members == (5,)
    handled: list[int] = []
    d.hooks.on_app = lambda sender, data: handled.append(sender)
    for _ in range(50):
        d._on_frames(7, [AppMessage(b"x")] * 100)  # 5,000 at once from outside the view
    assert outsiders.BURST <= len(handled) <= outsiders.BURST + outsiders.RATE * 1.0  # refilled meanwhile: < 1 s
    assert t.disconnected and {node for node, _ in t.disconnected} == {7}  # and its connections close
    d._on_frames(5, [AppMessage(b"x")] * 1000)  # a member (here itself) is never counted
    assert handled.count(5) == 1000

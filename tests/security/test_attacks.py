"""The attacks of the security issue, by real node processes on loopback and a rogue speaking
the wire protocol by hand (``tests.security.rogue``): each is run against a group with TLS
(the default) and again against one started with ``insecure=True``. Every TLS test ends with
the group serving and every replica identical; every insecure test asserts what really happens
there, so its name says whether ``--insecure`` leaves the attack open or blocks it anyway.

| attack (issue)                                               | TLS (default)                                    | ``--insecure``                                     |
| ------------------------------------------------------------ | ------------------------------------------------ | -------------------------------------------------- |
| stranger: Hello with a new id + JoinRequest                  | refused: no cert, other CA's cert, client cert   | OPEN: the stranger becomes a member                |
| anonymous client Call to a ``serializer="cloudpickle"`` type | refused at the handshake, nothing unpickled      | OPEN: the pickle runs on every replica             |
| GroupPush in another member's name, proposal + commit        | non-member (node 5): ignored; member: cut off    | OPEN: the victim installs [3, 66, 67], group stops |
| ShardPush in another member's name (a put to one replica)    | non-member: ignored; member (node 3): cut off    | OPEN: that replica silently diverges               |
| GroupPush in others' names with ``suspected`` set            | non-member: ignored; member: cut off             | OPEN: the whole group stops                        |
| Hello claiming another id (node 5's cert says node 2), close | refused ("the certificate names node 5")         | OPEN: connecting as node 2 and closing evicts it   |
| JoinRequest with a member's id and the attacker's address    | forged: connection closed, nothing re-pointed    | blocked: a member's address is never re-pointed    |
| Call.origin set to another client's origin, huge call number | ignored: origin = cert identity + session        | blocked: the contact ignores Call.origin           |
| Hello copying another client's session number                | harmless: another identity, another origin       | OPEN: every later call of the victim fails         |
| StateChunk from a node that is not the named source          | ignored, nothing unpickled, joiner ends equal    | msgpack type: blocked, never unpickled (the joiner |
|                                                              |                                                  | stops); cloudpickle type: OPEN, the pickle runs    |
| valid node-9 certificate, ``allowed_members = 1,2,3``        | refused (raw Hello, and a real node 9 process)   | not tested (ids are only claimed: take a listed one) |

A member caught forging is suspected at once by the node that caught it (its rows freeze) and
its connections are closed shortly after, so the honest members stay and it is removed; the
warning names its address. Limits (idle clients, handshakes, receive budget) are in
``test_limits.py``.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import LocalCluster
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import Call, ReplyBatch, StateChunk
from runtime.core.layout import ShardId
from runtime.core.messages import GroupPush, JoinReply, JoinRequest, ShardPush
from runtime.core.sst import RowDelta
from runtime.core.view import Proposal
from runtime.drivers.status import StatusError
from runtime.exitcodes import EXIT_FAILED, EXIT_STOPPED
from runtime.node_api import session_origin as client_origin
from runtime.security.certs import ensure_cluster_certs
from runtime.wire.control import Hello
from tests.security.rogue import (
    Blaster,
    Conn,
    Listener,
    bare_context,
    client_context,
    foreign_ca,
    frame,
    framed,
    free_port,
    incarnation_of,
    log_of,
    marks,
    members,
    node_context,
    ordered_payload,
    pickle_bomb,
    ranks,
    wait_until,
    warnings_of,
)

pytestmark = pytest.mark.timeout(120)

# A member the group removes exits (code 3) as these tests expect, instead of rejoining.
FAST = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "400", "node.on_partition": "exit"}
# Joiners fetch state in small steps (a window worth racing); nodes tolerate a busy machine meanwhile.
SLOW_TRANSFER = {
    "persistence.transfer_chunk_bytes": "16384",
    "persistence.transfer_window": "1",
    "timeouts.suspicion_ms": "1500",
}
BIG = 100_000  # entries of the state a joiner must fetch: its snapshot takes a while to make


# ------------------------------------------------------------------------ replicated types
@da.replicated
class KV:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    @da.ordered
    def put(self, key: str, value: Any) -> int:
        self.data[key] = value
        return len(self.data)

    @da.ordered
    def fill(self, prefix: str, n: int) -> int:
        for i in range(n):
            self.data[f"{prefix}{i}"] = i
        return len(self.data)

    @da.p2p
    def get(self, key: str) -> Any:
        return self.data.get(key)

    @da.p2p
    def digest(self) -> str:
        return hashlib.sha256(repr(sorted(self.data.items())).encode()).hexdigest()


@da.replicated(serializer="cloudpickle")
class PKV:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    @da.ordered
    def put(self, key: str, value: Any) -> int:
        self.data[key] = value
        return len(self.data)

    @da.ordered
    def fill(self, prefix: str, n: int) -> int:
        for i in range(n):
            self.data[f"{prefix}{i}"] = i
        return len(self.data)

    @da.p2p
    def digest(self) -> str:
        return hashlib.sha256(repr(sorted(self.data.items())).encode()).hexdigest()


LAYOUT_KV = da.Layout({KV: da.ShardPolicy(min_nodes=1)})
LAYOUT_BOTH = da.Layout({KV: da.ShardPolicy(min_nodes=1), PKV: da.ShardPolicy(min_nodes=1, overlapping=True)})
LAYOUT_PKV = da.Layout({PKV: da.ShardPolicy(min_nodes=1)})
KV_SHARD = ShardId("KV", 0, 0)
PKV_SHARD = ShardId("PKV", 0, 0)


# --------------------------------------------------------------------------------- helpers
def live_status(c: LocalCluster) -> dict[str, Any]:
    for n in sorted(c.procs):
        if c.procs[n].poll() is None:
            try:
                return c.status(n)
            except Exception:
                continue
    raise AssertionError("no node of the cluster answers")


def settled(c: LocalCluster, expected: set[int] | None = None) -> dict[str, Any]:
    """Wait until every running node reports one view (the same members, not wedged), equal
    to ``expected`` if given; returns the status of the lowest running node."""

    def ok() -> dict[str, Any] | None:
        running = [n for n in sorted(c.procs) if c.procs[n].poll() is None]
        sts = [c.status(n) for n in running]
        views = {(st.get("vid"), tuple(members(st))) for st in sts}
        if len(views) != 1 or any(st.get("wedged") or st.get("suspected") for st in sts):
            return None
        got = set(members(sts[0]))
        if (expected is not None and got != expected) or not got <= set(running):
            return None
        return sts[0]

    return wait_until(ok, 20, f"a settled view of {sorted(expected) if expected else 'the running nodes'}")


def serving_and_equal(c: LocalCluster, nodes: set[int]) -> None:
    """The group takes an ordered call at every replica of ``nodes`` and they all hold the
    same state, without the attacker's key."""
    h = c.handle(KV)
    key = f"probe-{random.getrandbits(40)}"
    replies = h.put(key, b"ok").get(timeout=20)
    assert set(replies) == nodes, replies
    digests = {n: h.digest(node=n).get(timeout=20)[n] for n in nodes}
    assert len(set(digests.values())) == 1, f"replicas differ: {digests}"
    for n in nodes:
        assert h.get("evil", node=n).get(timeout=20)[n] is None, f"the attacker's key reached node {n}"


def stays(pred: Callable[[], bool], seconds: float, what: str) -> None:
    """``pred`` holds throughout ``seconds`` (polled): for asserting that something does not happen."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert pred(), what
        time.sleep(0.05)


def view_lines(workdir: Path, node: int) -> list[str]:
    return [line for line in log_of(workdir, node).splitlines() if "installed: members" in line]


def views_with(workdir: Path, nodes: Iterable[int], strangers: set[int]) -> list[str]:
    """Log lines of views installed at ``nodes`` whose members include any of ``strangers``."""
    out = []
    for n in nodes:
        for line in view_lines(workdir, n):
            m = re.search(r"installed: members \[([0-9, ]*)\]", line)
            if m and strangers & {int(x) for x in m.group(1).split(",") if x.strip()}:
                out.append(line)
    return out


def log_time(line: str) -> float:
    """The time of a node log line (``%(asctime)s``, local time)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def first_line(workdir: Path, node: int, pattern: str, offset: int = 0) -> str | None:
    for line in log_of(workdir, node)[offset:].splitlines():
        if re.search(pattern, line):
            return line
    return None


def kv_args(*args: Any) -> bytes:
    return _codec.encode_args(args, {}, "msgpack")


def proposal_row(st: dict[str, Any], c: LocalCluster, victim: int, as_rank: int) -> RowDelta:
    """A group row, as rank ``as_rank``, that proposes and commits the next view as
    ``[victim, 66, 67]`` (all that a member needs to decide it)."""
    vid = st["vid"]
    others = [m for m in members(st) if m != victim]
    addresses = (c.address(victim), "127.0.0.1:1", "127.0.0.1:2")
    proposal = Proposal(vid + 1, (victim, 66, 67), addresses, (66, 67), tuple(others), ()).to_wire()
    return RowDelta(as_rank, 10**12, {"ballot": 1, "commit": 1, "proposal": proposal})


def all_stopped(c: LocalCluster) -> bool:
    return all(p.poll() is not None for p in c.procs.values())


def forge_suspicions_again(c: LocalCluster, inc: dict[int, int]) -> bool:
    """To each member of the current view, a row suspecting it in another member's name.
    Returns False (so a poll loop keeps going)."""
    time.sleep(0.5)  # the first wave's effects first
    for n in sorted(c.procs):
        if c.procs[n].poll() is None:
            try:
                st = c.status(n)
            except (StatusError, OSError):
                continue
            break
    else:
        return False
    if "vid" not in st or len(members(st)) < 2:
        return False
    rk = ranks(st)
    for target in members(st):
        sender = next(m for m in members(st) if m != target)
        try:
            with Conn(c.address(target)) as conn:
                conn.hello_member(sender, "open", inc[sender])
                conn.send(GroupPush(st["vid"], rk[sender], suspicion_row(st, rk[sender], {target})))
        except OSError:
            pass
    return False


def suspicion_row(st: dict[str, Any], as_rank: int, suspects: set[int]) -> RowDelta:
    return RowDelta(as_rank, 10**12 + 1, {"suspected": tuple(1 if m in suspects else 0 for m in members(st))})


def shard_push_as(st: dict[str, Any], node: int, evil: int = 50) -> ShardPush:
    """A push in ``node``'s name carrying ordered puts of the key "evil", numbered where the
    receiver (the node whose status ``st`` is) expects ``node``'s next messages."""
    shard_members = dict(st["layout"])[str(KV_SHARD)]
    rank = shard_members.index(node)
    me = members(st)[0] if st["node"] not in shard_members else st["node"]
    row = next(r for r in next(s for s in st["shards"] if s["shard"] == str(KV_SHARD))["members"] if r["node"] == me)
    payload = ordered_payload("put", ("evil", b"x"), caller=node, call_id=10**6)
    return ShardPush(st["vid"], KV_SHARD, rank, None, row["received"][rank], (payload,) * evil)


# ============================================================== TLS: strangers and impostors
@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    wd = tmp_path_factory.mktemp("tls")
    with LocalCluster(3, [KV, PKV], LAYOUT_BOTH, overrides=FAST, workdir=str(wd), cluster="sec") as c:
        ensure_cluster_certs(c.certs_dir, [5], clients=("mallory",), cluster="sec")
        c.handle(KV).put("seed", b"1").get(timeout=20)
        yield c


def test_tls_stranger_without_certificate_cannot_join(tls: LocalCluster) -> None:
    c = tls
    before = settled(c, {1, 2, 3})
    with Listener() as listener:
        # Plain TCP speaking the protocol: the node expects a TLS ClientHello.
        with Conn(c.address(1)) as r:
            r.hello_member(66, "sec")
            r.send(JoinRequest(66, listener.address))
            assert r.wait_closed(5), "a plain-TCP stranger was kept"
            assert not any(isinstance(m, (Hello, JoinReply)) for m in r.received)
        # TLS without a certificate: the handshake fails (the node requires one).
        try:
            with Conn(c.address(1), bare_context()) as r:
                r.hello_member(66, "sec")
                r.send(JoinRequest(66, listener.address))
                assert r.wait_closed(5), "a TLS stranger without certificate was kept"
                assert not r.hellos()
        except OSError:
            pass  # refused during the handshake itself
        stays(lambda: listener.accepted == 0, 0.5, "a node contacted the stranger")
    after = settled(c, {1, 2, 3})
    assert after["vid"] == before["vid"]
    serving_and_equal(c, {1, 2, 3})
    assert any("TLS handshake with 127.0.0.1" in w for w in warnings_of(c.workdir, [1])), "refusal not logged"


def test_tls_anonymous_call_to_cloudpickle_type_is_refused(tls: LocalCluster, tmp_path: Path) -> None:
    c = tls
    marker = tmp_path / "pwned"
    bomb = pickle_bomb(marker)
    call = Call(1, 0, PKV_SHARD, "put", True, bomb, 0, 0, 0)
    with Conn(c.address(2)) as r:  # no TLS at all
        r.hello_client(7, "sec")
        r.send(call)
        assert r.wait_closed(5)
    try:
        with Conn(c.address(2), bare_context()) as r:  # TLS, no certificate
            r.hello_client(7, "sec")
            r.send(call)
            assert r.wait_closed(5)
    except OSError:
        pass
    serving_and_equal(c, {1, 2, 3})  # an ordered call later: the bomb would have been delivered by now
    assert marks(marker) == [], "an anonymous pickle was unpickled"


def test_tls_certificate_of_another_ca_is_refused(tls: LocalCluster, tmp_path: Path) -> None:
    c = tls
    other = foreign_ca(tmp_path / "foreign")
    before = settled(c, {1, 2, 3})
    with Listener() as listener:
        for cert, hello in (("node-2", Hello(2, "sec", "member", 1)), ("client-mallory", Hello(9, "sec", "client", 1))):
            try:
                with Conn(c.address(1), bare_context(other / f"{cert}.crt", other / f"{cert}.key")) as r:
                    r.send(hello)
                    r.send(JoinRequest(2, listener.address))
                    assert r.wait_closed(5), f"a {cert} certificate of another CA was kept"
                    assert not r.hellos() and not r.goodbyes()
            except OSError:
                pass
        stays(lambda: listener.accepted == 0, 0.5, "node 1 sent node 2's frames to the impostor")
    assert settled(c, {1, 2, 3})["vid"] == before["vid"]
    serving_and_equal(c, {1, 2, 3})


def test_tls_client_certificate_cannot_join_or_push(tls: LocalCluster) -> None:
    c = tls
    st = settled(c, {1, 2, 3})
    ctx = client_context(c.certs_dir, "mallory")
    with Listener() as listener:
        with Conn(c.address(1), ctx) as r:  # as a member
            r.hello_member(66, "sec")
            r.send(JoinRequest(66, listener.address))
            assert r.wait_closed(5)
            assert any("cannot act as a member" in g for g in r.goodbyes()), r.received
        frames_ = [
            JoinRequest(66, listener.address),
            GroupPush(st["vid"], 0, proposal_row(st, c, 3, 0)),
            shard_push_as(c.status(1), 2),
        ]
        for msg in frames_:  # as a client, then a member's frame
            with Conn(c.address(1), ctx) as r:
                r.hello_client(4242, "sec")
                r.send(msg)
                assert r.wait_closed(5), f"a client connection that sent a {type(msg).__name__} was kept"
        stays(lambda: listener.accepted == 0, 0.3, "a node contacted the client")
    assert settled(c, {1, 2, 3})["vid"] == st["vid"]
    serving_and_equal(c, {1, 2, 3})
    assert any("which clients may not send" in w for w in warnings_of(c.workdir, [1]))


def test_tls_node_certificate_cannot_claim_another_id(tls: LocalCluster) -> None:
    """Node 5's certificate saying hello as node 2, then closing (which evicted node 2)."""
    c = tls
    st = settled(c, {1, 2, 3})
    with Conn(c.address(1), node_context(c.certs_dir, 5)) as r:
        r.hello_member(2, "sec", incarnation=99)
        r.send(JoinRequest(2, "127.0.0.1:1"))
        assert r.wait_closed(5)
        assert any("the certificate names node 5, the hello claims node 2" in g for g in r.goodbyes()), r.received
    stays(
        lambda: members(c.status(1)) == members(st) and c.status(1)["vid"] == st["vid"],
        0.8,
        "the impostor's connection changed the view",
    )
    serving_and_equal(c, {1, 2, 3})


def test_tls_join_request_naming_a_member_is_forged_and_cut_off(tls: LocalCluster) -> None:
    """Node 5 (a valid certificate, not a member) asks to join as node 2 at its own address."""
    c = tls
    st = settled(c, {1, 2, 3})
    with Listener() as listener:
        with Conn(c.address(1), node_context(c.certs_dir, 5)) as r:
            r.hello_member(5, "sec", incarnation=99)
            r.send(JoinRequest(2, listener.address))
            assert r.wait_closed(5), "a JoinRequest in another node's name did not close the connection"
        stays(lambda: listener.accepted == 0, 0.8, "node 1 sent node 2's frames to the attacker")
    assert settled(c, {1, 2, 3})["vid"] == st["vid"]
    serving_and_equal(c, {1, 2, 3})
    assert any("closing the connections of node 5" in w for w in warnings_of(c.workdir, [1]))


def test_tls_non_member_pushes_in_members_names_change_nothing(tls: LocalCluster) -> None:
    """Node 5 sends node 3 a proposal+commit as node 1 (the issue's [3, 66, 67] view) and node 1
    a put as node 2, and suspicions of everyone: all rejected, nothing changes."""
    c = tls
    st = settled(c, {1, 2, 3})
    rk = ranks(st)
    ctx = node_context(c.certs_dir, 5)
    with Conn(c.address(3), ctx) as r3, Conn(c.address(1), ctx) as r1:
        r3.hello_member(5, "sec", incarnation=99)
        r1.hello_member(5, "sec", incarnation=99)
        r3.send(GroupPush(st["vid"], rk[1], proposal_row(st, c, 3, rk[1])))
        r1.send(shard_push_as(c.status(1), 2))
        r1.send(GroupPush(st["vid"], rk[2], suspicion_row(st, rk[2], {1, 3})))
        r1.read(0.5)
        stays(
            lambda: c.status(3)["vid"] == st["vid"] and c.status(1)["vid"] == st["vid"],
            0.8,
            "a forged row moved a view",
        )
    assert not views_with(c.workdir, (1, 2, 3), {66, 67})
    serving_and_equal(c, {1, 2, 3})
    assert any("rejected input from node 5" in w for w in warnings_of(c.workdir, [1, 3]))


def test_tls_client_cannot_act_in_another_clients_session(tls: LocalCluster) -> None:
    """Mallory (a client certificate of her own) copies the victim's session number into her
    Hello and puts the victim's origin into Call.origin, with a huge call number."""
    c = tls
    settled(c, {1, 2, 3})
    with c.new_client() as victim:
        vh = victim.handle(KV)
        assert set(vh.put("v0", b"0").get(timeout=20)) == {1, 2, 3}
        victim_origin = client_origin("local", victim.session)
        for node in (1, 2):
            with Conn(c.address(node), client_context(c.certs_dir, "mallory")) as r:
                r.hello_client(victim.session, "sec", victim.session_ns)
                huge = 2**62 + node
                r.send(
                    Call(
                        huge, 0, KV_SHARD, "put", True, kv_args("poison", node), victim_origin, victim.session_ns, huge
                    )
                )
                r.read(10, until=lambda got: any(isinstance(m, ReplyBatch) for m in got))
                batches = [m for m in r.received if isinstance(m, ReplyBatch)]
                assert batches, f"mallory's own call got no answer: {r.received}"
                # Applied in mallory's own session (a client may call), not in the victim's.
                assert all(e[3] != victim_origin for b in batches for e in b.entries)
        for i in range(1, 6):
            replies = vh.put(f"v{i}", b"x").get(timeout=20)
            assert set(replies) == {1, 2, 3} and all(isinstance(v, int) for v in replies.values()), replies
    serving_and_equal(c, {1, 2, 3})


# ============================================ TLS: allow-list, and a compromised member
@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    wd = tmp_path_factory.mktemp("trio")
    overrides = {**FAST, "security.allowed_members": "1,2,3"}
    with LocalCluster(3, [KV], LAYOUT_KV, overrides=overrides, workdir=str(wd), cluster="trio") as c:
        c.handle(KV).put("seed", b"1").get(timeout=20)
        yield c


def test_tls_allow_list_refuses_node_9_with_a_valid_certificate(trio: LocalCluster) -> None:
    c = trio
    st = settled(c, {1, 2, 3})
    ensure_cluster_certs(c.certs_dir, [9], cluster="trio")
    with Conn(c.address(1), node_context(c.certs_dir, 9)) as r:
        r.hello_member(9, "trio", incarnation=5)
        r.send(JoinRequest(9, "127.0.0.1:1"))
        assert r.wait_closed(5)
        assert any("node 9 is not on this cluster's allowed_members list" in g for g in r.goodbyes()), r.received
    # A real node 9 process, with its certificate, trying to join through every member.
    c.ports[9] = free_port()
    c.start(9)
    try:
        wait_until(lambda: "allowed_members" in log_of(c.workdir, 9), 20, "node 9 to be refused")
        stays(lambda: 9 not in members(c.status(1)), 1.0, "node 9 joined despite the allow-list")
    finally:
        c.kill(9)
        del c.procs[9], c.ports[9]
    assert settled(c, {1, 2, 3})["vid"] == st["vid"]
    serving_and_equal(c, {1, 2, 3})


def quiet(c: LocalCluster, seconds: float = 0.8, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the running nodes agree on a view that has not changed for ``seconds``."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        try:
            st = settled(c)
            key = (st["vid"], tuple(members(st)), tuple(n for n in sorted(c.procs) if c.procs[n].poll() is None))
        except (AssertionError, OSError):
            key, st = None, None
        if key != last:
            last, since = key, time.monotonic()
        elif key is not None and time.monotonic() - since >= seconds:
            return st  # type: ignore[return-value]
        time.sleep(0.05)
    raise AssertionError(f"the group did not settle within {timeout} s")


# What node 3's certificate, in an attacker's hands, sends one member in another's name.
FORGERIES: list[tuple[str, int, Callable[[dict[str, Any], LocalCluster, Listener], Any]]] = [
    ("ShardPush: a put as node 2", 1, lambda st, c, lis: shard_push_as(c.status(1), 2)),
    (
        "GroupPush: proposal+commit of [2, 66, 67] as node 1",
        2,
        lambda st, c, lis: GroupPush(st["vid"], ranks(st)[1], proposal_row(st, c, 2, ranks(st)[1])),
    ),
    (
        "GroupPush: node 1's row suspecting node 2",
        2,
        lambda st, c, lis: GroupPush(st["vid"], ranks(st)[1], suspicion_row(st, ranks(st)[1], {2})),
    ),
    ("JoinRequest: node 2 at the attacker's address", 1, lambda st, c, lis: JoinRequest(2, lis.address)),
]


@pytest.fixture(scope="module")
def compromised(trio: LocalCluster) -> list[dict[str, Any]]:
    """Node 3's certificate in an attacker's hands: one forgery at a time (with node 3's real
    incarnation, which node 3 tells anyone saying hello with its certificate), each followed
    by what the group looks like once it has settled; stopped nodes are restarted in between.
    Records outcomes instead of asserting, so each test below judges one property."""
    c = trio
    ctx = node_context(c.certs_dir, 3)
    records: list[dict[str, Any]] = []
    for name, target, build in FORGERIES:
        rec: dict[str, Any] = {"forgery": name, "target": target}
        records.append(rec)
        try:
            st = settled(c, {1, 2, 3})
            inc3 = incarnation_of(c.address(3), "trio", as_id=3, ctx=ctx)
            with Listener() as listener:
                with Conn(c.address(target), ctx) as r:
                    r.hello_member(3, "trio", inc3)
                    r.send(build(st, c, listener))
                    rec["closed"] = r.wait_closed(5)
                    rec["local"] = r.local
                after = quiet(c)
                rec["accepted"] = listener.accepted
            live = set(members(after))
            rec["live"] = live
            rec["stopped"] = {n: c.procs[n].returncode for n in (1, 2, 3) if c.procs[n].poll() is not None}
            h = c.handle(KV)
            rec["probe"] = set(h.put(f"probe-{len(records)}", b"ok").get(timeout=20))
            rec["digests"] = {n: h.digest(node=n).get(timeout=20)[n] for n in live}
            rec["evil"] = {n: h.get("evil", node=n).get(timeout=20)[n] for n in live}
        except Exception as exc:  # recorded: the tests say which property broke
            rec["error"] = repr(exc)
        for n in (1, 2, 3):
            if c.procs[n].poll() is not None:
                c.start(n)
        settled(c, {1, 2, 3})
    return records


def test_tls_compromised_member_forging_others_is_cut_off(
    trio: LocalCluster, compromised: list[dict[str, Any]]
) -> None:
    for rec in compromised:
        assert rec.get("closed") is True, rec
        assert rec.get("accepted") == 0, rec
    for n in (1, 2):
        assert any("closing the connections of node 3" in w for w in warnings_of(trio.workdir, [n])), f"node {n}"


def test_tls_compromised_member_forgeries_never_reach_a_replica(
    trio: LocalCluster, compromised: list[dict[str, Any]]
) -> None:
    """Whoever is removed, the group keeps serving and no replica diverges or applies the
    forged put; no node ever installs a view with the phantom nodes 66 and 67."""
    for rec in compromised:
        assert "error" not in rec, rec
        assert rec["probe"] == rec["live"] and len(rec["live"]) >= 2, rec
        assert len(set(rec["digests"].values())) == 1, rec
        assert all(v is None for v in rec["evil"].values()), rec
    assert not views_with(trio.workdir, (1, 2, 3), {66, 67})


def test_tls_compromised_member_is_removed_and_the_honest_members_stay(compromised: list[dict[str, Any]]) -> None:
    for rec in compromised:
        assert "error" not in rec, rec
        assert {1, 2} <= rec["live"], f"{rec['forgery']}: honest members removed, live {rec['live']}"


def test_tls_forgery_warning_names_the_peer_address(trio: LocalCluster, compromised: list[dict[str, Any]]) -> None:
    for rec in compromised:
        lines = [w for w in warnings_of(trio.workdir, [rec["target"]]) if "node 3" in w and " WARNING " in w]
        assert any(rec["local"] in w for w in lines), f"node {rec['target']}: no WARNING naming {rec['local']}: {lines}"


# ================================================= TLS: state chunks from a non-source
@pytest.fixture(scope="module")
def tls_transfer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Node 3 restarts and waits for the state of a cloudpickle type; node 5 (a valid
    certificate, not a member) blasts StateChunks whose pickle would leave a marker."""
    wd = tmp_path_factory.mktemp("transfer")
    marker = wd / "pwned"
    overrides = {**FAST, **SLOW_TRANSFER}
    with LocalCluster(3, [PKV], LAYOUT_PKV, overrides=overrides, workdir=str(wd), cluster="xfer") as c:
        ensure_cluster_certs(c.certs_dir, [5], cluster="xfer")
        h = c.handle(PKV)
        h.fill("s", BIG).get(timeout=30)
        c.kill(3)
        settled(c, {1, 2})
        bomb = pickle_bomb(marker)
        chunks = framed(*[StateChunk(PKV_SHARD, vid, 0, "obj", bomb, True, False) for vid in range(2, 6)])
        hello = frame(Hello(5, "xfer", "member", 555))
        before = len(log_of(wd, 3))
        with Blaster(c.address(3), hello, chunks, ctx=node_context(c.certs_dir, 5), pause=0.005) as blaster:
            c.start(3)
            wait_until(
                lambda: "installed the state of PKV" in log_of(wd, 3)[before:], 30, "node 3 to install the state"
            )
        settled(c, {1, 2, 3})
        digests = {n: h.digest(node=n).get(timeout=30)[n] for n in (1, 2, 3)}
        return {
            "marks": marks(marker),
            "digests": digests,
            "sent_at": blaster.sent_at,
            "connections": blaster.connections,
            "asked": first_line(wd, 3, r"asks node \d+ for the state of PKV", before),
            "installed": first_line(wd, 3, r"installed the state of PKV", before),
            "failed": first_line(wd, 3, r"state transfer .* failed", before),
        }


def test_tls_state_chunks_from_a_non_source_are_ignored(tls_transfer: dict[str, Any]) -> None:
    t = tls_transfer
    assert t["asked"] and t["installed"] and not t["failed"], t
    start, end = log_time(t["asked"]), log_time(t["installed"])
    during = [s for s in t["sent_at"] if start - 0.01 <= s <= end + 0.01]
    assert during, f"the rogue's chunks did not overlap the transfer ({start}..{end})"
    assert t["marks"] == [], "a state chunk from a non-source was unpickled"
    assert len(set(t["digests"].values())) == 1, t["digests"]


# ====================================================================== insecure mode
@pytest.fixture(scope="module")
def insecure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    wd = tmp_path_factory.mktemp("insecure")
    with LocalCluster(3, [KV, PKV], LAYOUT_BOTH, overrides=FAST, workdir=str(wd), cluster="open", insecure=True) as c:
        c.handle(KV).put("seed", b"1").get(timeout=20)
        yield c


def test_insecure_open_stranger_join_becomes_a_member(insecure: LocalCluster) -> None:
    c = insecure
    settled(c, {1, 2, 3})
    with Listener() as listener, Conn(c.address(1)) as r:
        r.hello_member(66, "open")
        r.send(JoinRequest(66, listener.address))
        wait_until(lambda: views_with(c.workdir, [1], {66}), 10, "the stranger to be admitted")
    # The stranger never heartbeats, so it is suspected and removed again.
    settled(c, {1, 2, 3})
    serving_and_equal(c, {1, 2, 3})


def test_insecure_open_anonymous_call_to_cloudpickle_type_runs_code(insecure: LocalCluster, tmp_path: Path) -> None:
    c = insecure
    settled(c, {1, 2, 3})
    marker = tmp_path / "pwned"
    with Conn(c.address(2)) as r:
        r.hello_client(7, "open")
        r.send(Call(1, 0, PKV_SHARD, "put", True, pickle_bomb(marker), 0, 0, 0))
        wait_until(lambda: len(marks(marker)) == 3, 10, "the pickle to run on every replica")
    serving_and_equal(c, {1, 2, 3})


def test_insecure_blocked_call_origin_field_is_ignored(insecure: LocalCluster) -> None:
    c = insecure
    settled(c, {1, 2, 3})
    with c.new_client() as victim:
        vh = victim.handle(KV)
        vh.put("v0", b"0").get(timeout=20)
        with Conn(c.address(1)) as r:
            r.hello_client(random.getrandbits(60) | 1, "open")  # a session of its own
            huge = 2**62
            r.send(
                Call(
                    huge,
                    0,
                    KV_SHARD,
                    "put",
                    True,
                    kv_args("p", 1),
                    client_origin("", victim.session),
                    victim.session_ns,
                    huge,
                )
            )
            r.read(10, until=lambda got: any(isinstance(m, ReplyBatch) for m in got))
        for i in range(1, 4):
            replies = vh.put(f"v{i}", b"x").get(timeout=20)
            assert all(isinstance(v, int) for v in replies.values()), replies


def test_insecure_open_copied_session_poisons_the_victims_calls(insecure: LocalCluster) -> None:
    c = insecure
    settled(c, {1, 2, 3})
    with c.new_client() as victim:
        vh = victim.handle(KV)
        vh.put("v0", b"0").get(timeout=20)
        with Conn(c.address(1)) as r:
            r.hello_client(victim.session, "open", victim.session_ns)  # the session number, sniffed
            huge = 2**62
            r.send(Call(huge, 0, KV_SHARD, "put", True, kv_args("p", 1), 0, 0, huge))
            r.read(10, until=lambda got: any(isinstance(m, ReplyBatch) for m in got))
        with pytest.raises(da.ReplyForgotten, match="applied already"):
            vh.put("v1", b"x").get(timeout=20)
    serving_and_equal(c, {1, 2, 3})


@pytest.fixture(scope="module")
def insecure_hijack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """As node 2 (with its real incarnation, which any member hello reveals): a JoinRequest
    naming node 2 at the attacker's address; then the attacker's connection closes."""
    wd = tmp_path_factory.mktemp("hijack")
    with LocalCluster(3, [KV], LAYOUT_KV, overrides=FAST, workdir=str(wd), cluster="open", insecure=True) as c:
        c.handle(KV).put("seed", b"1").get(timeout=20)
        st = settled(c, {1, 2, 3})
        out: dict[str, Any] = {}
        inc2 = incarnation_of(c.address(2), "open", as_id=60000)
        with Listener() as listener:
            with Conn(c.address(1)) as r:
                r.hello_member(2, "open", inc2)
                r.send(JoinRequest(2, listener.address))
                r.read(0.5)
                c.handle(KV).put("during", b"1").get(timeout=20)  # node 1 has frames for node 2
                out["accepted"] = listener.accepted
                out["status_during"] = c.status(1)
            # The attacker's connection (in node 2's name) closes here.
            out["after"] = wait_until(
                lambda: (lambda s: s if 2 not in members(s) else None)(c.status(1)), 5, "node 2 to be evicted"
            )
        out["vid"] = st["vid"]
        out["address2"] = c.address(2)
        return out


def test_insecure_blocked_join_request_for_a_member_does_not_repoint_it(insecure_hijack: dict[str, Any]) -> None:
    h = insecure_hijack
    assert h["accepted"] == 0, "node 1 sent node 2's frames to the attacker"
    during = dict(h["status_during"]["members"])
    assert during.get(2) == h["address2"], during


def test_insecure_open_connecting_as_a_member_and_closing_evicts_it(insecure_hijack: dict[str, Any]) -> None:
    assert 2 not in members(insecure_hijack["after"])


@pytest.fixture(scope="module")
def insecure_forgery(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Frames in members' names, on connections that said hello as those members (with their
    real incarnations, which any member hello reveals): a put as node 2 to node 1; then to
    each member a row suspecting it, in another member's name."""
    wd = tmp_path_factory.mktemp("forgery")
    out: dict[str, Any] = {}
    with LocalCluster(3, [KV], LAYOUT_KV, overrides=FAST, workdir=str(wd), cluster="open", insecure=True) as c:
        h = c.handle(KV)
        h.put("seed", b"1").get(timeout=20)
        settled(c, {1, 2, 3})
        inc = {n: incarnation_of(c.address(n), "open", as_id=60000 + n) for n in (1, 2, 3)}
        st = settled(c, {1, 2, 3})
        rk = ranks(st)
        with Conn(c.address(1)) as as2, Conn(c.address(2)) as as3, Conn(c.address(3)) as as1:
            as2.hello_member(2, "open", inc[2])
            as3.hello_member(3, "open", inc[3])
            as1.hello_member(1, "open", inc[1])
            # 1. A put in node 2's name, to node 1 only.
            as2.send(shard_push_as(c.status(1), 2))
            out["diverged"] = []
            for i in range(5):
                try:
                    h.put(f"after{i}", b"1").get(timeout=20)
                except da.DivergenceError as err:  # node 1 holds one key more: its put replies differ
                    out["diverged"].append(err.groups)
            out["evil"] = {n: h.get("evil", node=n).get(timeout=20)[n] for n in (1, 2, 3)}
            out["digests"] = {n: h.digest(node=n).get(timeout=20)[n] for n in (1, 2, 3)}
            # 2. Three rows, each suspecting its receiver.
            st = settled(c, {1, 2, 3})
            as2.send(GroupPush(st["vid"], rk[2], suspicion_row(st, rk[2], {1})))
            as3.send(GroupPush(st["vid"], rk[3], suspicion_row(st, rk[3], {2})))
            as1.send(GroupPush(st["vid"], rk[1], suspicion_row(st, rk[1], {3})))
            # If the first stop is quick enough (a loaded machine), the others install a view
            # without it before their forged rows arrive, and ignore rows of the old view: the
            # attacker, watching as anyone can in insecure mode, forges again for the new view.
            wait_until(lambda: all_stopped(c) or forge_suspicions_again(c, inc), 40, "the group to stop", 1.0)
        out["exit"] = {n: c.procs[n].returncode for n in (1, 2, 3)}
        out["stops"] = {n: first_line(wd, n, "stops:") for n in (1, 2, 3)}
    return out


def test_insecure_open_forged_shard_push_diverges_one_replica(insecure_forgery: dict[str, Any]) -> None:
    f = insecure_forgery
    assert f["evil"][1] == b"x" and f["evil"][2] is None and f["evil"][3] is None, f["evil"]
    assert f["digests"][1] != f["digests"][2] == f["digests"][3]
    # The callers saw it at once: every later put's replies differ, node 1 against nodes 2 and 3.
    assert f["diverged"] and all(groups[-1][0] == (1,) and groups[0][0] == (2, 3) for groups in f["diverged"])


def test_insecure_open_forged_suspicions_stop_the_group(insecure_forgery: dict[str, Any]) -> None:
    f = insecure_forgery
    assert f["exit"] == {1: EXIT_STOPPED, 2: EXIT_STOPPED, 3: EXIT_STOPPED}, f
    # Each stops as suspected by a peer, or (when the others' rows arrive first) as partitioned.
    assert all(
        ("suspected by node" in (line or "") or "partitioned" in (line or "")) for line in f["stops"].values()
    ), f["stops"]


@pytest.fixture(scope="module")
def insecure_phantom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Node 1's row, proposing and committing the view [3, 66, 67], sent to node 3 on a
    connection that said hello as node 1."""
    wd = tmp_path_factory.mktemp("phantom")
    with LocalCluster(3, [KV], LAYOUT_KV, overrides=FAST, workdir=str(wd), cluster="open", insecure=True) as c:
        c.handle(KV).put("seed", b"1").get(timeout=20)
        inc1 = incarnation_of(c.address(1), "open", as_id=60001)
        st = settled(c, {1, 2, 3})
        rk = ranks(st)
        with Conn(c.address(3)) as as1:
            as1.hello_member(1, "open", inc1)
            as1.send(GroupPush(st["vid"], rk[1], proposal_row(st, c, 3, rk[1])))
            wait_until(lambda: all(c.procs[n].poll() is not None for n in (1, 2, 3)), 40, "the group to stop")
        return {n: view_lines(wd, n) for n in (1, 2, 3)} | {
            "exit": {n: c.procs[n].returncode for n in (1, 2, 3)},
            "stops": {n: first_line(wd, n, "stops:") for n in (1, 2, 3)},
        }


def test_insecure_open_forged_proposal_installs_a_phantom_view(insecure_phantom: dict[str, Any]) -> None:
    """Node 3 installs [3, 66, 67] and echoes the decision, so nodes 1 and 2 find themselves
    removed: the whole group stops."""
    p = insecure_phantom
    assert any("members [3, 66, 67]" in line for line in p[3]), p[3]
    assert p["exit"] == {1: EXIT_STOPPED, 2: EXIT_STOPPED, 3: EXIT_STOPPED}, p
    assert all("removed from the group" in (p["stops"][n] or "") for n in (1, 2)), p["stops"]


@pytest.fixture(scope="module")
def insecure_transfer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Node 3 rejoins (twice) and waits for the state of a msgpack type and of a cloudpickle
    type; the attacker, saying hello as nodes 1 and 2 (the possible sources), blasts chunks of
    one type's shard whose pickle would leave a marker: the msgpack type's the first time,
    the cloudpickle type's the second."""
    wd = tmp_path_factory.mktemp("itransfer")
    overrides = {**FAST, **SLOW_TRANSFER}
    out: dict[str, Any] = {}
    with LocalCluster(
        3, [KV, PKV], LAYOUT_BOTH, overrides=overrides, workdir=str(wd), cluster="open", insecure=True
    ) as c:
        c.handle(KV).fill("s", BIG).get(timeout=30)
        c.handle(PKV).fill("s", BIG).get(timeout=30)
        inc = {n: incarnation_of(c.address(n), "open", as_id=60000 + n) for n in (1, 2)}
        for shard, name in ((KV_SHARD, "msgpack"), (PKV_SHARD, "cloudpickle")):
            marker = wd / f"pwned-{name}"
            c.kill(3)
            settled(c, {1, 2})
            chunks = framed(
                *[StateChunk(shard, vid, 0, "obj", pickle_bomb(marker), True, False) for vid in range(2, 12)]
            )
            blasters = [Blaster(c.address(3), frame(Hello(n, "open", "member", inc[n])), chunks) for n in (1, 2)]
            log_before = len(log_of(wd, 3))
            for b in blasters:
                b.__enter__()
            try:
                c.start(3)
                wait_until(
                    lambda lb=log_before: (
                        c.procs[3].poll() is not None or "installed the state of" in log_of(wd, 3)[lb:]
                    ),
                    30,
                    "node 3 to take a state or stop",
                )
                wait_until(lambda: c.procs[3].poll() is not None, 10, "node 3 to stop")
            finally:
                for b in blasters:
                    b.stop()
            out[name] = {"marks": marks(marker), "exit": c.procs[3].returncode, "log": log_of(wd, 3)[log_before:]}
            settled(c, {1, 2})
    return out


def test_insecure_blocked_state_chunks_never_unpickled_for_msgpack_types(insecure_transfer: dict[str, Any]) -> None:
    t = insecure_transfer["msgpack"]
    assert t["marks"] == [], "a msgpack type's state was unpickled"
    # The forged chunk is taken as the source's: the joiner cannot decode it and stops.
    assert t["exit"] == EXIT_FAILED and "state transfer of KV failed" in t["log"], t["log"][-2000:]


def test_insecure_open_state_chunks_claiming_the_source_run_code_for_cloudpickle_types(
    insecure_transfer: dict[str, Any],
) -> None:
    t = insecure_transfer["cloudpickle"]
    assert len(t["marks"]) == 1, "the forged pickle did not run at the joiner"

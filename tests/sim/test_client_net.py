"""The simulator's client connections (``runtime.sim.client_net``) behave as the real driver
and TCP do: a dead node refuses, a cut link times out, a Hello is welcomed, a node in no view
turns the client away, a lost frame breaks the connection, a crash resets it, a stalled node
answers nothing until it resumes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.node_api import AppHooks, session_origin
from runtime.sim.client_net import CLIENT_HOST, Link, SimClientNet
from runtime.sim.network import SimNetwork
from runtime.sim.scheduler import Scheduler
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import AppMessage, Goodbye, Hello, Ping, Pong, Welcome

NODE = 7


@dataclass
class Core:
    view: Any = "a view"


@dataclass
class Node:
    alive: bool = True
    life: int = 0
    paused: bool = False
    core: Core = field(default_factory=Core)


@dataclass
class App:
    sched: Scheduler
    hooks: AppHooks
    life: int = 0
    config: Any = None

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        self.sched.at(self.sched.now, fn, *args)
        return True


class Cluster:
    """What ``SimClientNet`` reads of a ``SimCluster``."""

    def __init__(self) -> None:
        self.sched = Scheduler()
        self.net = SimNetwork(self.sched, random.Random(1))
        self.nodes = {NODE: Node()}
        self.calls: list[tuple[Any, bytes]] = []
        self.closed: list[Any] = []
        hooks = AppHooks(on_client_app=lambda c, d: self.calls.append((c, d)), on_client_closed=self.closed.append)
        self.apps = {NODE: App(self.sched, hooks)}
        self.held_actions: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    def held(self, node_id: int, action: Callable[..., None], args: tuple[Any, ...], timer: bool = False) -> bool:
        if not self.nodes[node_id].paused:
            return False
        self.held_actions.append((action, args))
        return True


class Client:
    def __init__(self, net: SimClientNet) -> None:
        self.dialed: list[str] = []
        self.frames: list[Any] = []
        self.ended: list[str] = []
        self.decoder = FrameDecoder()
        self.link = net.dial(NODE, self.on_dialed, self.on_data, self.on_closed)

    def on_dialed(self, link: Link, why: str) -> None:
        self.dialed.append(why)

    def on_data(self, link: Link, data: bytes) -> None:
        self.frames.extend(self.decoder.feed(data))

    def on_closed(self, link: Link, why: str) -> None:
        self.ended.append(why)


def setup() -> tuple[Cluster, SimClientNet, Client]:
    cluster = Cluster()
    net = SimClientNet(cluster)  # type: ignore[arg-type]
    return cluster, net, Client(net)


def run(cluster: Cluster, for_: float = 0.01) -> None:
    cluster.sched.run(cluster.sched.now + for_)


def test_a_dead_node_refuses_and_a_cut_link_times_out() -> None:
    cluster, net, _ = setup()
    cluster.nodes[NODE].alive = False
    refused = Client(net)
    run(cluster)
    assert refused.dialed == ["Connection refused"]
    cluster.nodes[NODE].alive = True
    cluster.net.partition({NODE}, {CLIENT_HOST})
    cut = Client(net)
    run(cluster, 0.1)
    assert cut.dialed == ["timed out"]


def test_hello_is_welcomed_pings_answered_calls_handed_to_the_app() -> None:
    cluster, _, client = setup()
    run(cluster)
    assert client.dialed == [""]
    client.link.send(frame(Hello(42, "sim", "client", 99)) + frame(Ping(3)) + frame(AppMessage(b"call")))
    run(cluster)
    assert [type(f) for f in client.frames] == [Welcome, Pong]
    ((conn, data),) = cluster.calls
    assert data == b"call" and conn.origin == session_origin("", 42) and conn.incarnation == 99
    client.link.net.reply(conn, (b"answer",))  # the app answers, as through NodeHandle.reply_client
    run(cluster)
    assert client.frames[-1] == AppMessage(b"answer")


def test_a_node_in_no_view_turns_the_client_away() -> None:
    cluster, _, client = setup()
    cluster.nodes[NODE].core.view = None
    run(cluster)
    client.link.send(frame(Hello(42, "sim", "client", 99)) + frame(AppMessage(b"call")))
    run(cluster)
    assert isinstance(client.frames[-1], Goodbye) and "not in a view" in client.frames[-1].reason
    assert client.ended == ["closed by the contact"] and cluster.calls == []
    assert len(cluster.closed) == 1, "the app hears the connection close"


def test_a_lost_frame_breaks_the_connection_both_ways() -> None:
    cluster, _, client = setup()
    run(cluster)
    client.link.send(frame(Hello(42, "sim", "client", 99)))
    run(cluster)
    cluster.net.partition({NODE}, {CLIENT_HOST})
    client.link.send(frame(Ping(1)))  # lost: the connection is broken
    run(cluster)
    assert len(cluster.closed) == 1
    cluster.net.heal()
    client.link.send(frame(Ping(2)))
    run(cluster)
    assert [type(f) for f in client.frames] == [Welcome], "nothing on a broken connection: the client hears silence"
    assert client.ended == []


def test_a_crash_resets_and_a_stall_holds_until_resumed() -> None:
    cluster, net, client = setup()
    run(cluster)
    client.link.send(frame(Hello(42, "sim", "client", 99)))
    run(cluster)
    cluster.nodes[NODE].paused = True
    client.link.send(frame(Ping(1)))
    run(cluster)
    assert [type(f) for f in client.frames] == [Welcome] and cluster.held_actions
    cluster.nodes[NODE].paused = False
    for action, args in cluster.held_actions:
        action(*args)
    run(cluster)
    assert [type(f) for f in client.frames] == [Welcome, Pong]
    cluster.nodes[NODE].alive = False
    net.node_ended(NODE)
    run(cluster)
    assert client.ended == ["connection reset"]

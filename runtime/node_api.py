"""The one door between an application (the actor layer) and a node of the group.

In the manner of etcd-io/raft's narrow ``Ready``/``Status`` surface: the application sends
ordered payloads and opaque messages through a :class:`NodeHandle`, and hears of deliveries,
views, persistence and messages through :class:`AppHooks`. The real node driver
(``runtime.drivers.node.NodeDriver``, TCP with TLS) implements it, and so does the simulator,
which is how a user's replicated class runs unchanged under a seeded, deterministic
simulation. Nothing above this interface knows about sockets, TLS, frames or the core.

Threading: hooks run on the node's loop (its one thread; the simulator's scheduler); methods
marked *thread-safe* may be called from any thread, the others only on the loop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from runtime.config import NodeConfig
from runtime.core.effects import Delivery
from runtime.core.layout import ShardId
from runtime.core.view import View


def session_origin(identity: str, session: int) -> int:
    """The exactly-once origin of a caller's session: derived from the caller's authenticated
    identity and the session number it chose, so no caller can act under (or poison) another's
    origin. Never 0 (0 marks calls without a session)."""
    digest = hashlib.blake2b(f"{identity}\0{session}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & ((1 << 62) - 1)) | 1


class ClientConn(Protocol):
    """A client's connection to this node, as the application sees it."""

    origin: int  # the exactly-once session the node derived from the client's identity
    incarnation: int | None  # when the client's session started (ns)
    closed: bool

    def close(self) -> None: ...


@dataclass(slots=True)
class AppHooks:
    """What the application hears from the node (all called on the node's loop)."""

    on_deliver: Callable[[Delivery], None] | None = None
    on_view: Callable[[View], None] | None = None
    on_window_open: Callable[[ShardId], None] | None = None
    on_stop: Callable[[str], None] | None = None
    on_app: Callable[[int, bytes], None] | None = None  # an application message from a member (proven id)
    on_client_app: Callable[[Any, bytes], None] | None = None  # an application message from a client connection
    # A client connection closed (either side): forget everything kept for it.
    on_client_closed: Callable[[Any], None] | None = None
    on_persisted: Callable[[ShardId, int], None] | None = None  # shard's persistence frontier moved
    # ``(shard, vid, n)``: every member of the shard has delivered the view-``vid`` messages of
    # global index below ``n`` (trails deliveries by at most a lazy push, ~20 ms).
    on_stable: Callable[[ShardId, int, int], None] | None = None
    # This node is about to accept view change ``vid`` (its ack is in the frames about to be
    # sent): make it durable now, before they leave. Raising OSError stops the node unsent.
    on_accepted: Callable[[int], None] | None = None
    # A total restart accepted to lose these versions (--accept-loss): shard -> (first, last).
    on_lost: Callable[[dict[ShardId, tuple[int, int]]], None] | None = None
    # What the app adds to ``status`` (plain data): why shards wait, replicas' state, ...
    status: Callable[[], dict[str, Any]] | None = None


class NodeHandle(Protocol):
    """A running (or starting) node, as the application drives it."""

    node_id: int
    config: NodeConfig
    hooks: AppHooks

    @property
    def incarnation(self) -> int:
        """Differs for every start of this node (real: the start time in ns)."""

    def wall_ns(self) -> int:
        """The wall clock in ns (the simulator's is virtual): calls are stamped with it."""

    def monotonic(self) -> float:
        """The clock (s) on which ``call_later`` counts its delays: deadlines of timers are
        taken on it, so a step of the wall clock moves none (the simulator's is virtual)."""

    def start(self, timeout: float = 10.0) -> None:
        """Start the node (founds, joins or restarts per its config); returns once it runs."""

    def stop(self, reason: str = "stopped") -> None:
        """Stop at once (others see it fail). Thread-safe."""

    def leave(self) -> None:
        """Leave the group gracefully: a view change without suspicion. Thread-safe."""

    def wait_stopped(self, timeout: float | None = None) -> None:
        """Block until the node has stopped (thread-safe; not on the loop)."""

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the node's loop soon; False once the node has stopped.
        Thread-safe."""

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop after ``delay`` seconds."""

    def run_blocking(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` where it may block (a disk write) without stalling the loop."""

    def on_loop(self) -> bool:
        """Whether the caller runs on the node's loop."""

    def send_ordered(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        """Multicast ``payloads`` in ``shard`` in this order (queued while the window is full;
        never dropped). Thread-safe."""

    def send_app(self, node: int, data: bytes) -> None:
        """An application message to member ``node`` (it arrives through ``on_app``)."""

    def link_backlog(self, node: int) -> int:
        """Bytes written to member ``node`` that its connection has not handed to the kernel
        yet (0 where there is no such queue): what a heartbeat sent now would wait behind."""

    def reply_client(self, conn: Any, *messages: bytes) -> bool:
        """Application messages to a client connection (``on_client_app``'s ``conn``), in one
        write. Returns whether the connection still takes writes (False: it closed, or this
        write cut it off for not reading): more for it would be made for nothing."""

    def report_persisted(self, shard: ShardId, version: int) -> None:
        """The app's log of ``shard`` holds every version up to ``version``. Thread-safe."""

    def cut_off(self, node: int, reason: str) -> None:
        """``node`` sent what its identity does not allow: suspect it and drop it."""

    def peer_public_key(self, node: int) -> bytes | None:
        """The public key ``node`` proved when it connected (None without TLS)."""

    def status(self) -> dict[str, Any]:
        """What the node knows of the group, for operators (plain data)."""

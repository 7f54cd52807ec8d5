"""Which transport a node runs: the one place that reads ``node.transport``.

Every node gets a :class:`~runtime.drivers.shm_transport.ShmTransport` around its TCP
transport; with ``transport = "tcp"`` (or where shared memory cannot work: another CPU, no
TLS) it offers no rings and only passes calls through, so ``status`` reports per peer what
carries its frames whatever the setting. ``transport = "rdma"`` gets an
:class:`~runtime.drivers.rdma_transport.RdmaTransport` instead (which refuses to start where
pyverbs or a device is missing); ``"auto"`` never picks RDMA, device or not: it is chosen only
when asked for.
"""

from __future__ import annotations

from runtime.config import NodeConfig
from runtime.drivers.node_io import tcp_transport
from runtime.drivers.rdma_transport import RdmaTransport
from runtime.drivers.shm_transport import ShmTransport, TransportMode
from runtime.drivers.tcp import TransportSecurity
from runtime.drivers.transport import ClientClosedHandler, ClientHandler, FramesHandler, PeerLostHandler, Transport


def node_transport(
    config: NodeConfig,
    security: TransportSecurity,
    incarnation: int,
    on_frames: FramesHandler,
    on_peer_lost: PeerLostHandler,
    on_client: ClientHandler,
    on_client_closed: ClientClosedHandler,
) -> ShmTransport:
    """The transport ``config`` asks for (not listening yet: ``await start()``)."""
    tcp = tcp_transport(config, security, incarnation, on_frames, on_peer_lost, on_client, on_client_closed)
    if config.node.transport == "rdma":
        return RdmaTransport(tcp)
    return ShmTransport(tcp, TransportMode(config.node.transport))


def peer_transports(transport: Transport) -> tuple[tuple[int, str], ...]:
    """``(peer, "tcp" | "shm" | "shm-out" | "shm-in" | "rdma" | ...)`` for ``status``, by peer id."""
    if isinstance(transport, RdmaTransport):
        return tuple(sorted(transport.peer_kinds().items()))
    if isinstance(transport, ShmTransport):
        return tuple(sorted((n, kind.value) for n, kind in transport.peer_transports().items()))
    return tuple((n, "tcp") for n in sorted(transport.traffic()))

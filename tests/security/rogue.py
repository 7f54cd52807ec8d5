"""A small attacker toolkit for the attack and limits tests: raw connections that speak the
wire protocol (plain TCP, or TLS with whatever certificate, or none), forged frames, payloads
that leave a mark on disk if anybody unpickles them, and ways to watch the victims (status,
logs, RSS). Nothing here goes through the product's own client code, so the tests exercise the
nodes exactly as an attacker on the same network would."""

from __future__ import annotations

import pickle
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from derecho_actors.wire import codec as _codec
from derecho_actors.wire import messages as _messages
from runtime.drivers.status import StatusError, fetch_status
from runtime.drivers.tcp import split_address
from runtime.security.certs import ensure_cluster_certs
from runtime.security.tls import TlsCredentials, load_credentials
from runtime.wire.codec import FrameDecoder
from runtime.wire.codec import frame as _engine_frame
from runtime.wire.control import AppMessage, Goodbye, Hello


def frame(msg: Any) -> bytes:
    """One frame of ``msg``: the actor layer's messages (calls, replies, state chunks) travel
    inside an ``AppMessage``, as a node would send them; the engine's own frames as they are."""
    if type(msg) in _messages._ENCODERS:
        return _engine_frame(AppMessage(_messages.encode(msg)))
    return _engine_frame(msg)


def frames(msgs: Iterable[Any]) -> bytes:
    return b"".join(frame(m) for m in msgs)


__all__ = [
    "Conn",
    "Listener",
    "Blaster",
    "bare_context",
    "client_context",
    "node_context",
    "foreign_ca",
    "incarnation_of",
    "pickle_bomb",
    "marks",
    "ordered_payload",
    "status",
    "members",
    "ranks",
    "wait_until",
    "rss_bytes",
    "log_of",
    "warnings_of",
    "framed",
    "free_port",
]


# ---------------------------------------------------------------------------- credentials
def node_context(certs_dir: Path | str, node_id: int) -> ssl.SSLContext:
    """A TLS client context presenting ``node-<id>.crt`` (issued by the cluster CA)."""
    creds = load_credentials(TlsCredentials.for_node(certs_dir, node_id), "node", node_id)
    return creds.client_context()


def client_context(certs_dir: Path | str, name: str) -> ssl.SSLContext:
    """A TLS client context presenting ``client-<name>.crt``."""
    creds = load_credentials(TlsCredentials.for_client(certs_dir, name), "client", name=name)
    return creds.client_context()


def bare_context(cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """TLS 1.3 that checks nothing about the server and presents ``cert`` (or no certificate
    at all): what a stranger uses to see whether the *server* refuses it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def foreign_ca(folder: Path) -> Path:
    """Another cluster's CA, with valid-looking node 2 and client 'mallory' certificates."""
    return ensure_cluster_certs(folder, [2], clients=("mallory",), cluster="foreign")


# ---------------------------------------------------------------------------- connections
class Conn:
    """One raw connection to a node. ``ctx``: TLS with that context (None: plain TCP).
    Construction raises what the handshake raises (``ssl.SSLError``, ``OSError``)."""

    def __init__(self, address: str, ctx: ssl.SSLContext | None = None, timeout: float = 5.0) -> None:
        host, port = split_address(address)
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock: socket.socket = ctx.wrap_socket(raw, server_hostname=host) if ctx is not None else raw
        except BaseException:
            raw.close()
            raise
        self.local = "%s:%d" % self.sock.getsockname()[:2]
        self.decoder = FrameDecoder()
        self.received: list[Any] = []
        self.closed = False  # the other end closed (EOF, reset or TLS alert)
        self.error: str | None = None

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, *msgs: Any) -> bool:
        """Send frames; False if the node had closed the connection already."""
        return self.send_raw(frames(msgs))

    def send_raw(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except (OSError, ssl.SSLError) as exc:
            self.closed, self.error = True, self.error or repr(exc)
            return False

    def hello_member(self, node_id: int, cluster: str, incarnation: int = 1) -> bool:
        return self.send(Hello(node_id, cluster, "member", incarnation))

    def hello_client(self, session: int, cluster: str, session_ns: int | None = None) -> bool:
        return self.send(Hello(session, cluster, "client", time.time_ns() if session_ns is None else session_ns))

    def read(self, timeout: float, until: Callable[[list[Any]], bool] | None = None) -> list[Any]:
        """Frames that arrive within ``timeout`` s (stops early at EOF or once ``until`` holds)."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            if until is not None and until(self.received):
                break
            self.sock.settimeout(max(0.01, min(0.2, deadline - time.monotonic())))
            try:
                data = self.sock.recv(1 << 16)
            except (socket.timeout, TimeoutError):
                continue
            except (OSError, ssl.SSLError) as exc:
                self.closed, self.error = True, repr(exc)
                break
            if not data:
                self.closed = True
                break
            for item in self.decoder.feed(data):  # the actor layer's messages come unwrapped
                if type(item) is AppMessage:
                    try:
                        item = _messages.decode(item.data)
                    except Exception:
                        pass
                self.received.append(item)
        return self.received

    def wait_closed(self, timeout: float) -> bool:
        """Whether the node closed this connection within ``timeout`` s."""
        self.read(timeout)
        return self.closed

    def goodbyes(self) -> list[str]:
        return [m.reason for m in self.received if isinstance(m, Goodbye)]

    def hellos(self) -> list[Hello]:
        return [m for m in self.received if isinstance(m, Hello)]


class Listener:
    """A listening socket on loopback that counts who connects to it (where an attacker
    would like a member's traffic to go)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        conns = []
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                break
            self.accepted += 1
            conns.append(c)
        for c in conns:
            c.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Blaster:
    """A thread that keeps (re)connecting to ``address`` and, after ``hello``, sends ``payload``
    (bytes of frames) over and over until stopped: for racing a short window (a joiner
    waiting for its state) without knowing exactly when it opens. ``sent_at`` records when
    each batch left (time.time(), to compare with node log timestamps)."""

    def __init__(
        self, address: str, hello: bytes, payload: bytes, ctx: ssl.SSLContext | None = None, pause: float = 0.002
    ) -> None:
        self.address, self.hello, self.payload, self.ctx, self.pause = address, hello, payload, ctx, pause
        self.sent_at: list[float] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Blaster:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = Conn(self.address, self.ctx, timeout=1.0)
            except (OSError, ssl.SSLError):
                time.sleep(0.01)
                continue
            self.connections += 1
            with conn:
                if not conn.send_raw(self.hello):
                    continue
                while not self._stop.is_set():
                    if not conn.send_raw(self.payload):
                        break
                    self.sent_at.append(time.time())
                    time.sleep(self.pause)


def incarnation_of(address: str, cluster: str, as_id: int, ctx: ssl.SSLContext | None = None) -> int:
    """A node's incarnation, which it announces to anyone who says hello as a member (a
    non-member id ``as_id`` is used, so the node's view of its members is not disturbed)."""
    with Conn(address, ctx) as c:
        c.hello_member(as_id, cluster, 12345)
        c.read(3.0, until=lambda got: any(isinstance(m, Hello) for m in got))
        hellos = c.hellos()
        assert hellos, f"{address} did not answer a member hello: {c.received} {c.error}"
        return hellos[0].incarnation


# ------------------------------------------------------------------------------ payloads
class _Mark:
    """Unpickling this runs code: it creates ``<path>.<pid>`` (so each process that ran it
    leaves its own file)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"import os; open({self.path!r} + '.' + str(os.getpid()), 'w').close()",))


def pickle_bomb(path: Path) -> bytes:
    """Pickle bytes whose loading leaves the file ``<path>.<pid>`` behind."""
    return pickle.dumps(_Mark(path))


def marks(path: Path) -> list[Path]:
    """Files the bomb for ``path`` left behind (one per process that unpickled it)."""
    return sorted(path.parent.glob(path.name + ".*"))


def ordered_payload(
    method: str, args: tuple[Any, ...], caller: int = 0, call_id: int = 1, serializer: str = "msgpack"
) -> bytes:
    """One multicast message carrying an ordered call, as a member's app layer makes it."""
    data = _codec.encode_args(args, {}, serializer)
    return _codec.encode_ordered([(caller, call_id, method, data, 0, 0, 0)], 1 << 20, time.time_ns())[0]


# ------------------------------------------------------------------------------ watching
def status(address: str, cluster: str, credentials: Any = None) -> dict[str, Any]:
    return fetch_status(address, cluster, timeout=2, credentials=credentials)


def members(st: dict[str, Any]) -> list[int]:
    return [m for m, _ in st.get("members", [])]


def ranks(st: dict[str, Any]) -> dict[int, int]:
    """Node id -> rank in the view (the group SST's and, with one shard of everyone, the
    shard's)."""
    return {m: r for r, m in enumerate(members(st))}


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something true (returned); AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            got = pred()
            if got:
                return got
        except (StatusError, OSError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}" + (f" (last: {last_exc})" if last_exc else "")
            )
        time.sleep(interval)


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def log_of(workdir: Path | str, node: int) -> str:
    path = Path(workdir) / f"node-{node}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def warnings_of(workdir: Path | str, nodes: Iterable[int]) -> list[str]:
    """The WARNING (and worse) lines of the nodes' logs."""
    out = []
    for n in nodes:
        out += [line for line in log_of(workdir, n).splitlines() if " WARNING " in line or " ERROR " in line]
    return out


def framed(*msgs: Any) -> bytes:
    """Frames, back to back (re-exported for tests that prebuild what a Blaster sends)."""
    return b"".join(frame(m) for m in msgs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

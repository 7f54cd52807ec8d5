"""A client's TLS socket is never used by two threads at once, and is closed by the socket
thread after its last call: OpenSSL does not make one SSL object safe for two threads at once
(the client had a reader and a writer thread on it), and a descriptor closed under a thread
still inside SSL_read/SSL_write is reused at once by another connection (or file) of the
process, whose bytes the stale call then reads or writes (a handshake failing with
WRONG_VERSION_NUMBER, a node seeing a bad record MAC). A call made alone is written by its
caller's thread (no wake-up of the socket thread); pipelined calls go in the socket thread's
frames."""

from __future__ import annotations

import ssl
import threading
from typing import Any

import pytest

import derecho_actors as da
from derecho_actors.caller import socket_loop
from runtime.drivers.dial import is_refusal
from tests.api.groups import client as client_of
from tests.api.groups import running_groups

pytestmark = pytest.mark.timeout(60)


@da.replicated
class Echo:
    def __init__(self) -> None:
        self.n = 0

    @da.ordered
    def add(self) -> int:
        self.n += 1
        return self.n


class Recorder:
    """A socket that notes which thread makes each call on it, and calls made while another
    thread's call on it had not returned (``overlaps``)."""

    def __init__(self, sock: Any, calls: list[tuple[str, threading.Thread]]) -> None:
        self._sock, self._calls = sock, calls
        self._inside: set[threading.Thread] = set()
        self._guard = threading.Lock()
        self.overlaps: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._sock, name)
        if not callable(attr):
            return attr

        def recorded(*args: Any, **kwargs: Any) -> Any:
            me = threading.current_thread()
            with self._guard:
                if self._inside:
                    self.overlaps.append(f"{name} on {me.name} while {[t.name for t in self._inside]} inside")
                self._inside.add(me)
                self._calls.append((name, me))
            try:
                return attr(*args, **kwargs)
            finally:
                with self._guard:
                    self._inside.discard(me)

        return recorded


def test_no_two_threads_use_the_tls_socket_at_once_and_the_socket_thread_closes_it_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, threading.Thread]] = []
    sockets: list[Recorder] = []
    real_dial = socket_loop.dial

    def dial(*args: Any) -> Any:
        sock = real_dial(*args)
        assert isinstance(sock, ssl.SSLSocket), "the test group runs TLS"
        calls.append(("dial", threading.current_thread()))
        sockets.append(Recorder(sock, calls))
        return sockets[-1]

    monkeypatch.setattr(socket_loop, "dial", dial)
    layout = da.Layout({Echo: da.ShardPolicy(min_nodes=1)})
    with running_groups(1, [Echo], layout, "sockets", 1500) as groups:
        client = client_of(groups)
        try:
            echo = client.handle(Echo)
            for _ in range(20):  # one at a time: the caller's thread writes each
                echo.add().get(timeout=20)
            answers = [echo.add() for _ in range(2000)]  # pipelined: the socket thread writes
            threads = [
                threading.Thread(target=lambda: [echo.add().get(timeout=20) for _ in range(50)]) for _ in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(n for r in answers for n in r.get(timeout=20).values())[-1] >= 2000
        finally:
            client.close()
    names = [name for name, _ in calls]
    assert {"recv", "send"} <= set(names), names[:20]
    assert [o for s in sockets for o in s.overlaps] == []
    me = threading.current_thread()
    assert ("send", me) in calls, "a call made alone was not written by its caller's thread"
    assert {t for name, t in calls if name == "recv"} == {client._thread}, "only the socket thread reads"
    assert names[-1] == "close" and calls[-1][1] is client._thread, names[-5:]


def _tls_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower().replace('_', ' ')}")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("reason", "refusal"),
    [
        ("WRONG_VERSION_NUMBER", False),  # garbled bytes (or a stale reader's), not a verdict on us
        ("DECRYPTION_FAILED_OR_BAD_RECORD_MAC", False),
        ("SSLV3_ALERT_CERTIFICATE_UNKNOWN", True),
        ("TLSV1_ALERT_UNKNOWN_CA", True),
        ("TLSV1_ALERT_PROTOCOL_VERSION", True),
        ("CERTIFICATE_VERIFY_FAILED", True),
    ],
)
def test_a_garbled_record_is_a_transient_error_not_a_refusal(reason: str, refusal: bool) -> None:
    assert is_refusal(_tls_error(reason)) is refusal

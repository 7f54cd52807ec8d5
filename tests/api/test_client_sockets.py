"""A client's TLS socket is used by one thread only, from the handshake to the close: OpenSSL
does not make one SSL object safe for two threads at once (the client had a reader and a
writer thread on it), and a descriptor closed under a thread still inside SSL_read/SSL_write
is reused at once by another connection (or file) of the process, whose bytes the stale call
then reads or writes (a handshake failing with WRONG_VERSION_NUMBER, a node seeing a bad
record MAC)."""

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
    """A socket that notes which thread makes each call on it."""

    def __init__(self, sock: Any, calls: list[tuple[str, threading.Thread]]) -> None:
        self._sock, self._calls = sock, calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._sock, name)
        if not callable(attr):
            return attr

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self._calls.append((name, threading.current_thread()))
            return attr(*args, **kwargs)

        return recorded


def test_one_thread_makes_every_call_on_the_tls_socket_and_closes_it_last(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, threading.Thread]] = []
    real_dial = socket_loop.dial

    def dial(*args: Any) -> Any:
        sock = real_dial(*args)
        assert isinstance(sock, ssl.SSLSocket), "the test group runs TLS"
        calls.append(("dial", threading.current_thread()))
        return Recorder(sock, calls)

    monkeypatch.setattr(socket_loop, "dial", dial)
    layout = da.Layout({Echo: da.ShardPolicy(min_nodes=1)})
    with running_groups(1, [Echo], layout, "sockets", 1500) as groups:
        client = client_of(groups)
        try:
            echo = client.handle(Echo)
            answers = [echo.add() for _ in range(2000)]  # callers' threads queue, the socket thread writes
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
    assert {t for _, t in calls} == {client._thread}, "a thread other than the socket thread used the SSL socket"
    assert names[-1] == "close", names[-5:]


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

"""A client's socket is closed only by its reader thread, and only once the writer is done
with it: a descriptor closed under a thread still inside SSL_read/SSL_write is reused at once
by another connection (or file) of the process, whose bytes the stale call then reads or
writes (a handshake failing with WRONG_VERSION_NUMBER, a node seeing a bad record MAC)."""

from __future__ import annotations

import ssl
import threading
import time
from typing import Any

import pytest

import derecho_actors as da
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


def test_close_waits_for_the_writer_and_leaves_closing_to_the_reader() -> None:
    layout = da.Layout({Echo: da.ShardPolicy(min_nodes=1)})
    with running_groups(1, [Echo], layout, "sockets", 1500) as groups:
        client = client_of(groups)
        try:
            echo = client.handle(Echo)
            echo.add().get(timeout=20)
            sock: Any = client._sock
            assert sock is not None
            sending, release = threading.Event(), threading.Event()
            closed: list[tuple[threading.Thread, bool]] = []
            real_sendall, real_close = sock.sendall, sock.close

            def sendall(data: bytes) -> None:
                sending.set()
                release.wait(10)  # a send still in progress (as in SSL_write)
                real_sendall(data)

            def close() -> None:
                closed.append((threading.current_thread(), release.is_set()))
                real_close()

            sock.sendall, sock.close = sendall, close
            echo.add()  # the writer thread blocks in sendall
            assert sending.wait(10)
            closer = threading.Thread(target=client.close)
            closer.start()
            time.sleep(0.5)
            assert closed == [], "the socket was closed while the writer was still sending on it"
            release.set()
            closer.join(10)
            assert closed == [(client._thread, True)], closed
        finally:
            client.close()


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

"""Kernel TLS is said absent, with each reason, and never claimed while a piece is missing."""

from __future__ import annotations

import types

import pytest

from runtime.security.kernel_tls import MEMORY_BIO, kernel_tls

pytestmark = pytest.mark.timeout(10)

WITH_KTLS = types.SimpleNamespace(OP_ENABLE_KTLS=8)
WITHOUT_KTLS = types.SimpleNamespace()


@pytest.mark.parametrize(
    "ulps, ssl_module, offered, can_ask, reasons",
    [
        ("mptcp\n", WITHOUT_KTLS, False, False, ["offers no 'tls' ULP (it offers: mptcp", "no OP_ENABLE_KTLS"]),
        ("espintcp mptcp tls\n", WITHOUT_KTLS, True, False, ["no OP_ENABLE_KTLS"]),
        ("tls\n", WITH_KTLS, True, True, []),
        ("\n", WITH_KTLS, False, True, ["(it offers: none;"]),
    ],
)
def test_each_missing_piece_is_named(
    ulps: str, ssl_module: object, offered: bool, can_ask: bool, reasons: list[str]
) -> None:
    found = kernel_tls(ulps=ulps, ssl_module=ssl_module)  # type: ignore[arg-type]
    assert (found.kernel_offers_it, found.python_can_ask) == (offered, can_ask)
    assert not found.used  # asyncio's memory BIOs: never in use yet, whatever else holds
    assert found.missing[-1] == MEMORY_BIO and len(found.missing) == len(reasons) + 1
    for reason, said in zip(reasons, found.missing):
        assert reason in said
    assert found.describe().startswith("kernel TLS not used: ")


def test_an_unreadable_ulp_list_is_said(tmp_path: object) -> None:
    found = kernel_tls(ssl_module=WITH_KTLS, read_from="/nonexistent/tcp_available_ulp")  # type: ignore[arg-type]
    assert "unreadable" in found.missing[0] and not found.kernel_offers_it


def test_this_machine_is_described_in_one_line() -> None:
    line = kernel_tls().describe()
    assert "\n" not in line and MEMORY_BIO in line

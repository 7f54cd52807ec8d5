"""Whether kernel TLS could carry this node's encrypted bytes, and why not.

Issue 22 asks for kernel TLS (the ``tls`` upper-layer protocol of Linux, turned on through
OpenSSL's ``SSL_OP_ENABLE_KTLS``) where the platform offers it, and for a clear word where it
does not: with it, the kernel encrypts a block straight from the page it lies in, with no
copy through user space. Three things must hold, and the node says at start which fail:

- the kernel offers the ``tls`` ULP (``/proc/sys/net/ipv4/tcp_available_ulp``; the module
  ``tls`` loaded, a kernel built with ``CONFIG_TLS``);
- Python's ``ssl`` module can ask OpenSSL for it (``ssl.OP_ENABLE_KTLS``, Python 3.12+);
- the connection's TLS runs on a socket BIO. This one fails everywhere today: the node's
  connections run OpenSSL over memory BIOs (``ssl.MemoryBIO``, in
  ``runtime/drivers/tls_stream.py``, so that TLS fits the event loop), and kernel TLS can
  only take over a socket OpenSSL writes itself.

So the node never uses kernel TLS yet, and reports each missing piece, so an operator knows
what a kernel, a Python or a driver change would buy.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from types import ModuleType

ULP_PATH = "/proc/sys/net/ipv4/tcp_available_ulp"
MEMORY_BIO = "the node's TLS runs OpenSSL over memory BIOs on its event loop, which kernel TLS cannot take over"

__all__ = ["KernelTls", "kernel_tls"]


@dataclass(frozen=True, slots=True)
class KernelTls:
    """What was found: ``used`` only if nothing is ``missing``."""

    kernel_offers_it: bool
    python_can_ask: bool
    missing: tuple[str, ...]

    @property
    def used(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        if self.used:
            return "kernel TLS in use"
        return "kernel TLS not used: " + "; ".join(self.missing)


def _read_ulps(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def kernel_tls(ulps: str | None = None, ssl_module: ModuleType = ssl, read_from: str = ULP_PATH) -> KernelTls:
    """Look (``ulps``: the text of ``tcp_available_ulp`` if already read, for tests)."""
    text = _read_ulps(read_from) if ulps is None else ulps
    offered = text is not None and "tls" in text.split()
    can_ask = hasattr(ssl_module, "OP_ENABLE_KTLS")
    missing = []
    if text is None:
        missing.append(f"the kernel does not say which ULPs it offers ({read_from} unreadable)")
    elif not offered:
        listed = " ".join(text.split()) or "none"
        missing.append(f"the kernel offers no 'tls' ULP (it offers: {listed}; load the tls module)")
    if not can_ask:
        missing.append("this Python's ssl module has no OP_ENABLE_KTLS (Python 3.12 adds it)")
    missing.append(MEMORY_BIO)
    return KernelTls(offered, can_ask, tuple(missing))

"""What the examples' command-line clients share: where the group is and who is asking.

    python examples/NAME.py COMMAND ARGS --contact HOST:PORT [--contact ...] --certs-dir certs

``--certs-dir`` holds ca.crt and a client certificate (``derecho-actors certs create-client``);
``--insecure`` talks to a group that runs without TLS.
"""

from __future__ import annotations

import argparse

import derecho_actors as da


def add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--contact", action="append", default=[], help="a member's HOST:PORT (repeatable)")
    p.add_argument("--cluster", default="derecho")
    p.add_argument(
        "--certs-dir", help="folder with ca.crt and a client certificate (derecho-actors certs create-client)"
    )
    p.add_argument("--name", help="which client certificate in --certs-dir (default: the only one)")
    p.add_argument("--insecure", action="store_true", help="no TLS (the group runs with security.insecure)")


def connect(p: argparse.ArgumentParser, a: argparse.Namespace) -> da.Client:
    """A client of the group the arguments name (or a usage error naming what is missing)."""
    if not a.contact:
        p.error(f"--contact is needed for {a.command}")
    if not a.insecure and not a.certs_dir:
        p.error("--certs-dir is needed (or --insecure for a group without TLS)")
    if a.insecure:
        return da.Client(a.contact, cluster=a.cluster, insecure=True)
    return da.Client(a.contact, cluster=a.cluster, certs_dir=a.certs_dir, name=a.name)


def need(p: argparse.ArgumentParser, a: argparse.Namespace, count: int, usage: str) -> list[str]:
    if len(a.args) != count:
        p.error(f"usage: {a.command} {usage}")
    return list(a.args)

"""What the examples' command-line clients share: where the group is and who is asking.

    python examples/NAME.py COMMAND ARGS --contact HOST:PORT [--contact ...] --certs-dir certs

``--certs-dir`` holds ca.crt and a client certificate (``derecho-actors certs create-client``);
``--insecure`` talks to a group that runs without TLS.

A failure (a refused certificate, no node listening, no answer in time) is one line on
standard error saying what to check, and a non-zero exit (1; 2 for a usage error): a
traceback would bury the one thing the user needs to know.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

import derecho_actors as da

EXIT_ERROR = 1
CONNECT_TIMEOUT = 5.0  # seconds to reach some contact

_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (da.Refused, "check --certs-dir: its ca.crt must be the group's CA, with a client certificate it signed"),
    (da.CallTimeout, "the group did not answer in time; `derecho-actors status --contact ...` says why"),
    (da.ShardUnavailable, "start the nodes the layout needs, then try again"),
    (da.GroupClosed, "check --contact: a node must listen there (`derecho-actors status --contact HOST:PORT`)"),
)


class _NoErrors(logging.Filter):
    """The library's ERROR lines repeat what the exception says, which the CLI prints itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


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
    # A person waits at the prompt: five seconds to reach some contact is plenty on a network
    # that works, and a port nobody listens on is said in that time rather than in ten.
    if a.insecure:
        return da.Client(a.contact, cluster=a.cluster, insecure=True, connect_timeout=CONNECT_TIMEOUT)
    return da.Client(a.contact, cluster=a.cluster, certs_dir=a.certs_dir, name=a.name, connect_timeout=CONNECT_TIMEOUT)


def need(p: argparse.ArgumentParser, a: argparse.Namespace, count: int, usage: str) -> list[str]:
    if len(a.args) != count:
        p.error(f"usage: {a.command} {usage}")
    return list(a.args)


def run(main: Callable[[], int]) -> int:
    """Run an example's ``main``: errors of the group, certificates or sockets become one line
    ``NAME: error: WHAT; WHAT TO DO`` on standard error and exit code 1."""
    handler = logging.StreamHandler()
    handler.addFilter(_NoErrors())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    prog = os.path.basename(sys.argv[0])
    try:
        return main()
    except KeyboardInterrupt:
        return 130
    except (da.DerechoError, OSError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        hint = next((h for cls, h in _HINTS if isinstance(exc, cls)), "")
        print(f"{prog}: error: {text}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return EXIT_ERROR

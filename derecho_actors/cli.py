"""The ``derecho-actors`` command.

Subcommands so far: ``sim`` (the deterministic simulator of the protocol core). Node,
status and demo commands arrive with the node work and are absent until then.
"""

from __future__ import annotations

import argparse
import sys

from derecho_actors import __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="derecho-actors", description="derecho-actors command line")
    parser.add_argument("--version", action="version", version=f"derecho-actors {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "sim",
        help="run seeded simulations of the protocol core and check its invariants",
        add_help=False,
    )
    if not argv:
        parser.print_help()
        return 2
    args, rest = parser.parse_known_args(argv[:1])
    if args.command == "sim":
        from runtime.sim.__main__ import main as sim_main

        return sim_main(argv[1:])
    parser.error(f"unknown command {argv[0]!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``derecho-actors`` command: ``node`` (in ``node_command``), ``status``, ``top``,
``certs``, ``demo``, ``multicast-demo``, ``sim``, ``verify`` and ``keygen``.

Errors a user can cause (a bad config, a port in use, an unreachable contact) end with one
line on standard error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from derecho_actors import __version__
from derecho_actors.tools.node_command import add_node_parser, run_node
from runtime.errors import ConfigError, DerechoError
from runtime.exitcodes import EXIT_CONFIG


def run_status(args: argparse.Namespace) -> int:
    from runtime.drivers.status import fetch_status, render_status

    credentials = _operator_credentials(args, "status")
    status = fetch_status(args.contact, args.cluster, timeout=args.timeout, credentials=credentials)
    if args.json:
        import json

        print(json.dumps(status, indent=2))
    else:
        render_status(status)
    return 0


def _operator_credentials(args: argparse.Namespace, command: str) -> Any:
    from runtime.drivers.dial import client_credentials

    if args.insecure:
        return None
    if args.certs_dir:
        return client_credentials(args.certs_dir, args.name)
    raise ConfigError(
        f"{command} needs --certs-dir DIR with a client certificate (or --insecure for a group without TLS)"
    )


def run_top_command(args: argparse.Namespace) -> int:
    from runtime.drivers.status import fetch_status
    from runtime.drivers.top import run_top

    credentials = _operator_credentials(args, "top")
    if args.interval <= 0 or (args.rounds is not None and args.rounds < 1):
        raise ConfigError("--interval must be > 0 and --rounds >= 1")

    def fetch(address: str) -> dict[str, Any] | None:
        try:
            return fetch_status(address, args.cluster, timeout=1.0, credentials=credentials)
        except (OSError, DerechoError):
            return None

    run_top(args.contact, fetch, args.interval, args.rounds)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from derecho_actors.tools.demo import run_demo as kv_demo

    return kv_demo(nodes=args.nodes, writes=args.writes, workdir=args.workdir)


def run_multicast_demo(args: argparse.Namespace) -> int:
    from derecho_actors.tools.multicast_demo import demo

    return demo(nodes=args.nodes, messages=args.messages, base_port=args.port, workdir=args.workdir)


def run_verify(args: argparse.Namespace) -> int:
    from runtime.drivers.log_store import load_public_key, verify, verify_dir

    target = Path(args.path)
    if not target.exists():
        raise ConfigError(f"{target} does not exist; give a data_dir or a .log file")
    key = load_public_key(args.key) if args.key else None
    reports = verify_dir(target, key) if target.is_dir() else [verify(target, key)]
    if not reports:
        print(f"no *.log files under {target}")
        return 0
    for report in reports:
        print(report.describe())
    return 0 if all(r.ok for r in reports) else 1


def run_keygen(args: argparse.Namespace) -> int:
    from runtime.drivers.log_store import generate_key, public_key_bytes

    try:
        key = generate_key(args.path)
    except FileExistsError:
        raise ConfigError(f"{args.path} already exists; choose another path (keys are never overwritten)") from None
    print(f"wrote the private key {args.path} (mode 0600; keep it secret) and the public key {args.path}.pub")
    print(f"public key: {public_key_bytes(key).hex()}")
    return 0


def run_certs(args: argparse.Namespace) -> int:
    from runtime.security import certs

    folder = Path(args.certs_dir)
    if args.action == "create-ca":
        made = certs.create_ca(folder, cluster=args.cluster, days=args.days, force=args.force)
    elif args.action == "create-node":
        made = certs.create_node(
            folder, args.id, hosts=tuple(args.host or ("localhost", "127.0.0.1")), days=args.days, force=args.force
        )
    elif args.action == "create-client":
        made = certs.create_client(folder, args.name, days=args.days, force=args.force)
    elif args.action == "revoke":
        from runtime.security.revocation import revoke

        try:
            serial = int(args.serial.replace(":", ""), 16) if args.serial else None
        except ValueError:
            raise ConfigError(f"--serial {args.serial}: expected a hexadecimal serial number") from None
        path, line = revoke(folder, args.who, args.all, serial, args.file)
        print(f"revoked: {line.strip()}")
        print(f"appended to {path}; copy it to every node's certs folder (nodes re-read it at their next handshake)")
        return 0
    else:
        for line in certs.list_certs(folder):
            print(line)
        return 0
    print(
        f"wrote {made.cert} and {made.key} (mode 0600: keep it secret) for {made.identity}; "
        f"valid until {made.not_after:%Y-%m-%d %H:%M} UTC"
    )
    return 0


def _certs_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("certs", help="make the cluster's CA and node and client certificates (mutual TLS)")
    actions = c.add_subparsers(dest="action", metavar="ACTION", required=True)
    ca = actions.add_parser("create-ca", help="a new CA for one cluster: ca.crt and ca.key")
    ca.add_argument("--cluster", default="derecho", help="cluster name, recorded in the CA's name")
    ca.add_argument("--days", type=int, default=3650)
    node = actions.add_parser("create-node", help="node-ID.crt/.key: a certificate naming node ID")
    node.add_argument("id", type=int, metavar="ID")
    node.add_argument(
        "--host",
        action="append",
        metavar="NAME_OR_IP",
        help="host name or address of the node, for the certificate (repeatable; default localhost, 127.0.0.1)",
    )
    node.add_argument("--days", type=int, default=825)
    client = actions.add_parser("create-client", help="client-NAME.crt/.key: a certificate naming client NAME")
    client.add_argument("name", metavar="NAME")
    client.add_argument("--days", type=int, default=825)
    actions.add_parser("list", help="what the certificates in the folder are and when they expire")
    rv = actions.add_parser(
        "revoke", help="add a node's or client's certificate to the revocation list (revoked.txt) nodes check"
    )
    rv.add_argument(
        "who", metavar="NODE_ID|CLIENT", help="a node id (3, node-3) or a client name (alice, client-alice)"
    )
    rv.add_argument("--serial", metavar="HEX", help="revoke this certificate of it (default: the one in --certs-dir)")
    rv.add_argument("--all", action="store_true", help="revoke every certificate naming it, including later ones")
    rv.add_argument("--file", help="the revocation list (default CERTS_DIR/revoked.txt; security.revocation_file)")
    for p in (ca, node, client):
        p.add_argument("--force", action="store_true", help="replace existing files")
    for p in actions.choices.values():
        p.add_argument("--certs-dir", default="certs", help="the folder (default ./certs); keys are written mode 0600")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="derecho-actors", description="derecho-actors command line")
    parser.add_argument("--version", action="version", version=f"derecho-actors {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_node_parser(sub)
    st = sub.add_parser("status", help="show the view, leader, shards and lag of a running group")
    st.add_argument("--contact", required=True, metavar="HOST:PORT", help="any member of the group")
    st.add_argument("--cluster", default="derecho", help="the group's cluster name (default: derecho)")
    st.add_argument("--timeout", type=float, default=3.0)
    st.add_argument("--json", action="store_true", help="print the raw status as JSON")
    st.add_argument("--certs-dir", help="folder with ca.crt and a client certificate")
    st.add_argument("--name", help="which client certificate in --certs-dir (default: the only one)")
    st.add_argument("--insecure", action="store_true", help="no TLS (the group runs with security.insecure)")
    tp = sub.add_parser("top", help="a live view of every member: rates, windows, lags, traffic (^C ends)")
    tp.add_argument("--contact", action="append", required=True, metavar="HOST:PORT", help="a member (repeatable)")
    tp.add_argument("--cluster", default="derecho", help="the group's cluster name (default: derecho)")
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    tp.add_argument("--rounds", type=int, help="print once after this many rounds (at least 2) instead of live")
    tp.add_argument("--certs-dir", help="folder with ca.crt and a client certificate")
    tp.add_argument("--name", help="which client certificate in --certs-dir (default: the only one)")
    tp.add_argument("--insecure", action="store_true", help="no TLS (the group runs with security.insecure)")
    _certs_parser(sub)
    dm = sub.add_parser("demo", help="a sharded replicated KV store on a local cluster; kill -9 a replica mid-write")
    dm.add_argument("--nodes", type=int, default=6, help="node processes (even, at least 4)")
    dm.add_argument("--writes", type=int, default=4000)
    dm.add_argument("--workdir", help="where logs go (default: a temporary folder)")
    mm = sub.add_parser("multicast-demo", help="raw ordered multicast between node processes; kill -9 and rejoin")
    mm.add_argument("--nodes", type=int, default=3)
    mm.add_argument("--messages", type=int, default=20000, help="messages each node multicasts")
    mm.add_argument("--port", type=int, default=7100, help="first port (nodes use consecutive ports)")
    mm.add_argument("--workdir", help="where logs go (default: a temporary folder)")
    vf = sub.add_parser("verify", help="check persistent logs (crc, order, signatures) without changing them")
    vf.add_argument("path", metavar="DATA_DIR_OR_FILE", help="a data_dir (every *.log under it) or one log file")
    vf.add_argument(
        "--key",
        metavar="KEY",
        help="require signatures by this key: a PEM public or private key file, or the public key in hex",
    )
    kg = sub.add_parser("keygen", help="make an ed25519 key for signed logs (PATH, mode 0600, and PATH.pub)")
    kg.add_argument("path", metavar="PATH")
    sub.add_parser("sim", help="run seeded simulations of the protocol core and check its invariants", add_help=False)
    if not argv:
        parser.print_help()
        return EXIT_CONFIG
    if argv[0] == "sim":
        from runtime.sim.__main__ import main as sim_main

        return sim_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        if args.command == "node":
            return run_node(args)
        if args.command == "status":
            return run_status(args)
        if args.command == "top":
            return run_top_command(args)
        if args.command == "demo":
            if args.nodes < 4 or args.nodes % 2:
                raise ConfigError("--nodes must be even and at least 4 (two shards of two or more)")
            return run_demo(args)
        if args.command == "multicast-demo":
            return run_multicast_demo(args)
        if args.command == "verify":
            return run_verify(args)
        if args.command == "keygen":
            return run_keygen(args)
        if args.command == "certs":
            return run_certs(args)
    except ConfigError as exc:
        print(f"derecho-actors {args.command}: config error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_CONFIG))  # 7: the transport cannot run here
    except DerechoError as exc:
        print(f"derecho-actors {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {argv[0]!r}")
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())

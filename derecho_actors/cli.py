"""The ``derecho-actors`` command: ``node``, ``status``, ``certs``, ``demo``, ``sim``,
``verify`` and ``keygen``.

Errors a user can cause (a bad config, a port in use, an unreachable contact) end with one
line on standard error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from derecho_actors import __version__
from runtime.errors import ConfigError, DerechoError
from runtime.exitcodes import EXIT_CONFIG, EXIT_RESTART_REFUSED, EXIT_STOPPED, EXIT_STORAGE


def _node_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="run one node of a group (founds it, or joins through a contact)")
    p.add_argument("--config", help="TOML config file (every field has a default)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config field")
    p.add_argument("--id", type=str, help="shorthand for --set node.id=ID")
    p.add_argument("--listen", help="shorthand for --set node.listen=HOST:PORT")
    p.add_argument("--contact", action="append", help="shorthand for node.contacts (repeatable)")
    p.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="shorthand for node.advertise: where peers reach this node if not at --listen (a pod's DNS name)",
    )
    p.add_argument(
        "--bootstrap-expect",
        type=int,
        metavar="N",
        help="shorthand for node.bootstrap_expect: with an empty data dir, found only once N nodes with empty data "
        "dirs are up and no group runs (the lowest id founds); for nodes sharing one command line",
    )
    p.add_argument("--certs-dir", help="shorthand for --set security.certs_dir=DIR (ca.crt, node-ID.crt, node-ID.key)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="run without TLS (security.insecure): anyone who can reach the port can join and forge traffic",
    )
    p.add_argument(
        "--accept-loss",
        action="store_true",
        help="total restart: go ahead even if the surviving logs lack versions reported persisted (logged at ERROR)",
    )
    p.add_argument(
        "--app",
        action="append",
        metavar="MODULE:CLASS[,CLASS]",
        help="host these replicated classes (repeatable; also node.app in the config): the module is imported "
        "from the working directory or the installed packages, as uvicorn imports apps",
    )
    p.add_argument(
        "--no-leave",
        action="store_true",
        help="on SIGTERM/SIGINT stop without leaving the group (a restart, not a departure: Kubernetes pods)",
    )
    p.add_argument(
        "--id-from-ordinal",
        action="store_true",
        help="node.id = the StatefulSet ordinal in $HOSTNAME (name-N) + 1, kept in data_dir/node-id",
    )
    p.add_argument("--send", type=int, default=0, metavar="N", help="load generator: multicast N numbered messages")
    p.add_argument("--size", type=int, default=100, help="load generator: payload size in bytes (default 100)")
    p.add_argument(
        "--wait-members", type=int, default=1, metavar="K", help="load generator: start once a view has K members"
    )
    p.add_argument("--delivery-log", metavar="PATH", help="append one line per delivered message to PATH")


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    from runtime.config import parse_override

    out: dict[str, str] = {}
    for text in args.set:
        key, value = parse_override(text)
        out[key] = value
    if args.id is not None:
        out["node.id"] = args.id
    if args.listen is not None:
        out["node.listen"] = args.listen
    if args.contact:
        out["node.contacts"] = ",".join(args.contact)
    if getattr(args, "advertise", None):
        out["node.advertise"] = args.advertise
    if getattr(args, "bootstrap_expect", None) is not None:
        out["node.bootstrap_expect"] = str(args.bootstrap_expect)
    if getattr(args, "app", None):
        out["node.app"] = ",".join(args.app)
    if getattr(args, "certs_dir", None):
        out["security.certs_dir"] = args.certs_dir
    if getattr(args, "insecure", False):
        out["security.insecure"] = "true"
    return out


def run_node(args: argparse.Namespace) -> int:
    from derecho_actors._load_app import LoadApp
    from runtime.config import load_config
    from runtime.drivers.node import NodeDriver

    config = load_config(args.config, _overrides(args), os.environ)
    if args.id_from_ordinal:
        import dataclasses

        node_id = id_from_ordinal(os.environ.get("HOSTNAME", ""), Path(config.node.data_dir))
        config = dataclasses.replace(config, node=dataclasses.replace(config.node, id=node_id))
    logging.basicConfig(
        level=getattr(logging, config.node.log_level),
        format=f"%(asctime)s node{config.node.id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.send < 0 or args.size < 1:
        raise ConfigError("--send must be >= 0 and --size >= 1")
    if config.node.app:
        if args.send or args.delivery_log:
            raise ConfigError(
                "--send and --delivery-log run the raw multicast load; a node hosting --app classes "
                "takes calls from clients instead"
            )
        return run_app_node(config, args.accept_loss, leave=not args.no_leave)
    app = LoadApp(
        config.node.id,
        args.send,
        args.size,
        Path(args.delivery_log) if args.delivery_log else None,
        wait_members=args.wait_members,
    )
    driver = NodeDriver(config, app.hooks(), accept_loss=args.accept_loss)
    app.driver = driver

    async def main() -> str:
        loop = asyncio.get_running_loop()
        left = {"asked": False}

        def on_signal() -> None:
            if left["asked"] or driver.core is None or driver.core.view is None:
                driver.stop("interrupted")
                return
            left["asked"] = True
            logging.getLogger("derecho.node").info("leaving the group (signal)")
            driver.leave()
            grace = config.timeouts.suspicion_ms / 1000 * 4
            loop.call_later(grace, driver.stop, "left without a view change (timed out)")

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        return await driver.run()

    try:
        reason = asyncio.run(main())
    finally:
        app.close()
    if driver.error is not None:
        raise driver.error
    if reason.startswith(("partitioned", "suspected", "removed", "committed")):
        print(f"derecho-actors node: stopped: {reason}", file=sys.stderr)
        return EXIT_STOPPED
    if reason.startswith("storage failure"):
        print(f"derecho-actors node: {reason}", file=sys.stderr)
        return EXIT_STORAGE
    if reason.startswith("restart refused"):
        print(f"derecho-actors node: {reason}", file=sys.stderr)
        return EXIT_RESTART_REFUSED
    if reason.startswith("join refused"):
        print(f"derecho-actors node: {reason}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def id_from_ordinal(hostname: str, data_dir: Path) -> int:
    """A StatefulSet pod's node id: its ordinal (``name-N`` in its hostname) + 1, written to
    ``data_dir/node-id`` the first time and checked against it after (a volume moved to
    another pod would otherwise give one node two ids)."""
    head, _, tail = hostname.rpartition("-")
    if not head or not tail.isdigit():
        raise ConfigError(f"--id-from-ordinal: the hostname {hostname!r} does not end in -N (a StatefulSet pod's does)")
    node_id = int(tail) + 1
    kept = data_dir / "node-id"
    if kept.exists():
        text = kept.read_text().strip()
        if text != str(node_id):
            raise ConfigError(
                f"--id-from-ordinal: {kept} says this data belongs to node {text}, but the hostname {hostname!r} "
                f"gives node {node_id}; give each pod its own volume"
            )
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        kept.write_text(f"{node_id}\n")
    return node_id


def run_app_node(config: Any, accept_loss: bool, leave: bool = True) -> int:
    """A node hosting replicated classes (``node.app``) until SIGTERM or SIGINT (then it leaves
    the group gracefully, or with ``leave=False`` just stops: a restart, not a departure) or
    until the group stops it; its exit code says which. Removed from the group (a stall, a
    partition) it joins again as a new member, per ``node.on_partition``."""
    import dataclasses
    import threading

    from derecho_actors._app_host import hosted_layout, load_apps
    from derecho_actors._group import Group
    from runtime.errors import GroupClosed

    classes = load_apps(config.node.app)
    layout = hosted_layout(classes, config.layout, scan_modules=True)
    log = logging.getLogger("derecho.node")
    log.info("hosting %s; layout: %s", ", ".join(config.node.app), layout.policy.describe())
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    start_timeout = config.timeouts.connect_timeout_ms / 1000 + 60
    try:
        group = Group(config=config, types=classes, layout=layout, accept_loss=accept_loss, start_timeout=start_timeout)
    except GroupClosed as exc:
        print(f"derecho-actors node: {exc}", file=sys.stderr)
        return exc.exit_code if exc.exit_code is not None else EXIT_STOPPED
    from derecho_actors._rejoin import Rejoiner

    def rejoin(contacts: list[str]) -> Group:
        # Out of the group, the node keeps one listener and keeps trying (clients are told
        # why it cannot serve them), until it is back, refused for good, or signalled.
        node = dataclasses.replace(config.node, contacts=tuple(contacts), bootstrap_expect=0)
        again = dataclasses.replace(config, node=node)
        return Group(
            config=again,
            types=classes,
            layout=layout,
            accept_loss=accept_loss,
            start_timeout=math.inf,
            rejoin_reason=rejoiner.out_reason or "removed from the group",
            cancel=done,
        )

    # Removed by the group (a stall, a partition): join again as a new member, unless
    # node.on_partition = "exit" (then exit 3 for a supervisor to act on).
    rejoiner = Rejoiner(config.node.id, config.node.on_partition, config.contact_addresses(), rejoin, done)
    running, code = rejoiner.run(group, poll=0.2)
    if running is None:
        if rejoiner.reason is not None:
            print(f"derecho-actors node: stopped: {rejoiner.reason}", file=sys.stderr)
        return code
    group = running
    if not leave:
        log.info("stopping without leaving the group (signal; --no-leave): the others see this node fail")
        group.close()
        return 0
    log.info("leaving the group (signal)")
    group.leave()
    return group.exit_code


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
    from derecho_actors._demo import run_demo as kv_demo

    return kv_demo(nodes=args.nodes, writes=args.writes, workdir=args.workdir)


def run_multicast_demo(args: argparse.Namespace) -> int:
    from derecho_actors._multicast_demo import demo

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
    _node_parser(sub)
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
        return EXIT_CONFIG
    except DerechoError as exc:
        print(f"derecho-actors {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {argv[0]!r}")
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())

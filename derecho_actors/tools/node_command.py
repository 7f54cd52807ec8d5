"""``derecho-actors node``: one node of a group, from its configuration and flags: a raw
multicast node (the built-in load application) or, with ``--app``, a host of replicated
classes that joins again when the group removes it (``node.on_partition``).

Errors a user can cause end with one line on standard error and the exit code the docs list.
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

from runtime.errors import ConfigError
from runtime.exitcodes import EXIT_CONFIG, EXIT_RESTART_REFUSED, EXIT_STOPPED, EXIT_STORAGE


def add_node_parser(sub: argparse._SubParsersAction) -> None:
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
    from derecho_actors.tools.load_app import LoadApp
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

    from derecho_actors.node.app_host import hosted_layout, load_apps
    from derecho_actors.node.group import Group
    from runtime.errors import GroupClosed

    classes = load_apps(config.node.app)
    layout = hosted_layout(classes, config.layout, scan_modules=True)
    log = logging.getLogger("derecho.node")
    log.info("hosting %s; layout: %s", ", ".join(config.node.app), layout.policy.describe())
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    start_timeout = config.timeouts.connect_timeout_ms / 1000 + 60
    from derecho_actors.node.gc_tuning import tune_node_gc
    from derecho_actors.node.rejoin import Rejoiner

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

    # Removed by the group (a stall, a partition), even while it starts: join again as a new
    # member, unless node.on_partition = "exit" (then exit 3 for a supervisor to act on).
    rejoiner = Rejoiner(config.node.id, config.node.on_partition, config.contact_addresses(), rejoin, done)
    try:
        first, code = rejoiner.first(
            lambda: Group(
                config=config, types=classes, layout=layout, accept_loss=accept_loss, start_timeout=start_timeout
            )
        )
    except GroupClosed as exc:
        print(f"derecho-actors node: {exc}", file=sys.stderr)
        return exc.exit_code if exc.exit_code is not None else EXIT_STOPPED
    if first is None:
        if rejoiner.reason is not None:
            print(f"derecho-actors node: stopped: {rejoiner.reason}", file=sys.stderr)
        return code
    tune_node_gc()  # this process is the node's own (derecho_actors.node.gc_tuning)
    running, code = rejoiner.run(first, poll=0.2)
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

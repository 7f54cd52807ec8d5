"""One node of a ``local_cluster``: ``python -m derecho_actors.tools.cluster_node SPEC [--parent-fd N] --set k=v ...``

Runs a ``Group`` with the replicated types and layout from the cloudpickle file SPEC until it
is killed, stops (fail-stop on a storage failure; removed from the group with
``node.on_partition = "exit"``), or gets SIGTERM or SIGINT (then it leaves gracefully). Its exit
code says which (``runtime.exitcodes``). Removed from the group with the default
``node.on_partition = "rejoin"``, it joins again as a new member (``derecho_actors.node.rejoin``).

``--parent-fd N``: the read end of a pipe whose write end only the parent process holds. When
the parent dies, however it dies (SIGKILL included), the pipe reports end-of-file and the node
leaves and exits: a script killed mid-way leaves no node process behind.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading

import cloudpickle

from derecho_actors.node.rejoin import Rejoiner
from runtime.config import parse_override
from runtime.errors import ConfigError, DerechoError, GroupClosed
from runtime.exitcodes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK

log = logging.getLogger("derecho.cluster_node")


def _watch_parent(fd: int, done: threading.Event) -> None:
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    log.warning("the parent process is gone: leaving the group")
    done.set()


def main(argv: list[str]) -> int:
    spec_path, rest = argv[0], argv[1:]
    overrides = {}
    parent_fd: int | None = None
    accept_loss = False
    i = 0
    while i < len(rest):
        flag = rest[i]
        if flag == "--accept-loss":
            accept_loss = True
            i += 1
            continue
        if flag == "--parent-fd" and i + 1 < len(rest):
            parent_fd = int(rest[i + 1])
        elif flag == "--set" and i + 1 < len(rest):
            key, value = parse_override(rest[i + 1])
            overrides[key] = value
        else:
            print(f"unexpected argument {flag!r}", file=sys.stderr)
            return EXIT_CONFIG
        i += 2
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s node{overrides.get('node.id')} %(levelname)s %(name)s: %(message)s"
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if parent_fd is not None:
        threading.Thread(target=_watch_parent, args=(parent_fd, done), name="parent-watch", daemon=True).start()
    with open(spec_path, "rb") as f:
        spec = cloudpickle.load(f)
    from derecho_actors.node.gc_tuning import tune_node_gc
    from derecho_actors.node.group import Group
    from runtime.config import load_config

    try:
        config = load_config(None, dict(overrides))  # what Group reads too: for the Rejoiner
    except ConfigError as exc:
        print(f"node config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    def rejoin(contacts: list[str]) -> Group:
        # Out of the group: one listener, trying until back (see node_command.run_app_node).
        again = {**overrides, "node.contacts": ",".join(contacts), "node.bootstrap_expect": "0"}
        return Group(
            types=spec["types"],
            layout=spec["layout"],
            overrides=again,
            accept_loss=accept_loss,
            start_timeout=math.inf,
            rejoin_reason=rejoiner.out_reason or "removed from the group",
            cancel=done,
        )

    rejoiner = Rejoiner(config.node.id, config.node.on_partition, config.contact_addresses(), rejoin, done)
    try:  # removed by the group even while it starts: joins again (Rejoiner.first)
        group, code = rejoiner.first(
            lambda: Group(types=spec["types"], layout=spec["layout"], overrides=overrides, accept_loss=accept_loss)
        )
    except ConfigError as exc:
        print(f"node config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except GroupClosed as exc:
        print(f"node stopped: {exc}", file=sys.stderr)
        return exc.exit_code if exc.exit_code is not None else EXIT_FAILED
    except DerechoError as exc:
        print(f"node could not start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if group is None:
        return code
    tune_node_gc()  # this process is the node's own (derecho_actors.node.gc_tuning)
    running, code = rejoiner.run(group)
    if running is None:
        return code
    running.leave()
    return EXIT_OK if running.exit_code == EXIT_OK else running.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

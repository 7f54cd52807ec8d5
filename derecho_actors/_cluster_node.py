"""One node of a ``local_cluster``: ``python -m derecho_actors._cluster_node SPEC --set k=v``.

Runs a ``Group`` with the replicated types and layout from the cloudpickle file SPEC until it
is killed, stops (removed from the group), or gets SIGTERM (then it leaves gracefully).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import cloudpickle

from derecho_actors._group import Group
from runtime.config import parse_override


def main(argv: list[str]) -> int:
    spec_path, rest = argv[0], argv[1:]
    overrides = {}
    for i in range(0, len(rest), 2):
        if rest[i] != "--set":
            print(f"unexpected argument {rest[i]!r}", file=sys.stderr)
            return 2
        key, value = parse_override(rest[i + 1])
        overrides[key] = value
    with open(spec_path, "rb") as f:
        spec = cloudpickle.load(f)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s node{overrides.get('node.id')} %(levelname)s %(name)s: %(message)s")
    done = threading.Event()
    group = Group(types=spec["types"], layout=spec["layout"], overrides=overrides)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    group.on_view(lambda v: None)
    while not done.wait(0.2):
        if group._stopped is not None:
            return 3
    group.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

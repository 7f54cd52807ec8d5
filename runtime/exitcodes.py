"""Exit codes of a node process (``derecho-actors node`` and ``local_cluster`` nodes).

Operators and supervisors (systemd, Kubernetes) act on them, so each names one kind of end:

====  =====================================================================================
0     stopped as asked (SIGTERM, SIGINT, a graceful leave)
2     bad configuration or start-up problem (config, certificates, data_dir, port, a layout that
      differs from the group's); the message names the field or path
3     stopped by the group: removed from the view, or in a minority partition, with
      ``node.on_partition = "exit"``; restart it to join again as a new member. (With the
      default, ``"rejoin"``, such a node does not exit: it joins again as a new member itself,
      retrying with backoff while the majority is unreachable.)
4     storage failure: the log could not be written or fsync failed or stalled; the node left
      the group (fail-stop). Free space or fix the disk, then restart it: it catches up from
      the group
5     total restart refused: the surviving logs lack versions that were reported persisted;
      bring back the nodes that hold them, or restart with ``--accept-loss``
6     the node failed in a way it cannot recover from alone (a state transfer it needed
      failed, or an internal error); it left the group; the log line before says why
7     the transport ``node.transport`` asks for cannot run on this host (``"rdma"`` without
      pyverbs, or without an RDMA device); the one line printed says which and what to install
====  =====================================================================================
"""

START_FAILED = "start-up failed"
"""How a stop reason begins when the node could not get going (no contact reachable, a bad
setting found at start): its exit code is ``EXIT_CONFIG``, as for a config error in any mode."""

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_STOPPED = 3
EXIT_STORAGE = 4
EXIT_RESTART_REFUSED = 5
EXIT_FAILED = 6
EXIT_UNAVAILABLE = 7


def exit_code_for_stop(reason: str) -> int:
    """The exit code of a node the engine stopped with ``reason`` (its ``on_stop`` hook)."""
    if reason.startswith("restart refused"):
        return EXIT_RESTART_REFUSED
    if reason.startswith(("join refused", START_FAILED)):
        return EXIT_CONFIG
    if reason.startswith("storage failure"):
        return EXIT_STORAGE
    if reason.startswith(("left the group", "closed")):
        return EXIT_OK
    return EXIT_STOPPED

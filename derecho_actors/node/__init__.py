"""The group on the node's loop (its one thread): composition (``Group``), dispatch of arriving
messages, the call paths (this node's calls, calls taken on for its replicas, the client proxy
and its limits, the multicast outbox, answers), hosting of replicas, state transfer,
persistence frontiers, stopping and rejoining. Imports everything below it.
"""

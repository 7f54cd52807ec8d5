"""Command-line tools built on the library: the ``derecho-actors`` command, ``local_cluster`` and
its node process, the demos, and the built-in load application of raw multicast nodes.
"""

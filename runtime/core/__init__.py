"""Sans-I/O protocol core: pure, deterministic state machines; events in, effects out.

Nothing in this package may touch sockets, threads, clocks, files or the environment; a test
enforces that. Time enters only as a value carried by events.
"""

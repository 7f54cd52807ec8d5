"""Users' replicated classes in the deterministic simulator: ``da.simulate``, workloads, the
simulated nodes that host the real ``node`` layer, and the simulated clients that run the real
``ClientSession``.
"""

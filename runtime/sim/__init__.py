"""Deterministic simulator: the same protocol core on a virtual clock and network."""

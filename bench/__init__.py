"""Benchmarks for derecho-actors: ``python bench/run.py [--quick] [--out DIR] [--only NAME,...]``."""

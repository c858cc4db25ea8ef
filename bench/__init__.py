"""Benchmarks for gochat: a load generator, the naive yardstick hub and the runner.

`python bench/run.py --help` (or `make bench`) runs them; docs/performance.md reads them.
"""

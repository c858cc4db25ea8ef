"""The benchmark's short S1 in the suite: a fan-out loses, duplicates and reorders nothing.

Correctness only (never timing): 100 clients, 300 messages at 200 msg/s, 30,000 deliveries
checked by sequence number on every client (bench/loadgen.py).
"""

from __future__ import annotations

from bench.run import run_check


def test_fanout_loses_nothing() -> None:
    result = run_check(clients=100, messages=300, rate=200.0)
    assert result["ok"], result
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["reordered"] == 0

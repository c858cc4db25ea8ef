"""The benchmark's short S1 in the suite: a fan-out loses, duplicates and reorders nothing.

Correctness only (never timing): 100 clients, 300 messages at 200 msg/s, 30,000 deliveries
checked by sequence number on every client (bench/loadgen.py).
"""

from __future__ import annotations

from bench import report
from bench.run import pair_order, run_check


def test_fanout_loses_nothing() -> None:
    result = run_check(clients=100, messages=300, rate=200.0)
    assert result["ok"], result
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["reordered"] == 0


def test_repeated_runs_are_reported_as_medians() -> None:
    """`bench/run.py --repeat N`: each figure is the median of its runs, ratios pair by pair."""
    runs = [
        {"kind": "result", "scenario": "S2", "server": "gochat", "rate": 1000.0, "round": n}
        | {"us_per_delivery": us, "lost": 0, "noisy": noisy, "latency_ms": {"p99": p99}}
        for n, (us, p99, noisy) in enumerate(
            [(20.0, 5.0, False), (30.0, 9.0, True), (22.0, 6.0, False)]
        )
    ]
    ratios = [
        {"kind": "ratio", "scenario": "S2", "a": "S2 gochat", "b": "S2 naive", "rate": 1000.0}
        | {"us_per_delivery": r}
        for r in (0.6, 0.9, 0.65)
    ]
    result, ratio = report.medians([{"kind": "machine"}, *runs, *ratios])
    assert result["us_per_delivery"] == 22.0 and result["latency_ms"] == {"p99": 6.0}
    assert result["runs"] == 3 and result["us_per_delivery_range"] == [20.0, 30.0]
    assert result["noisy"] is False and result["noisy_runs"] == 1 and result["lost"] == 0
    assert "round" not in result
    assert ratio["us_per_delivery"] == 0.65 and ratio["runs"] == 3
    assert "median of" in report.render([*runs, *ratios])
    other = [r | {"b": "S1 naive", "us_per_delivery": 5.0} for r in ratios]
    assert len(report.medians([*ratios, *other])) == 2  # a / b and a / other b: not mixed


def test_repeated_rounds_alternate_which_server_runs_first() -> None:
    both = ["gochat", "naive"]
    assert [pair_order(both, n) for n in (1, 2, 3, 4)] == [both, both[::-1], both, both[::-1]]
    assert pair_order(["naive", "gochat"], 2) == ["naive", "gochat"]
    assert pair_order(["gochat"], 2) == ["gochat"]

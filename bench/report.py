"""Turn the JSON lines of bench/run.py into the Markdown tables of docs/performance.md.

python bench/run.py --out results.jsonl && python bench/report.py results.jsonl

When a run was repeated (`bench/run.py --repeat N`, or several files), each table shows the
median of every figure over the repeats, with the number of runs; a ratio is the median of
the ratios measured pair by pair (each pair back to back), not a ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Iterable
from typing import Any

Row = dict[str, Any]


def _get(row: Row, dotted: str) -> Any:
    val: Any = row
    for part in dotted.split("."):
        val = val.get(part) if isinstance(val, dict) else None
    return val


def _fmt(val: Any) -> str:
    if val is None:
        return "–"
    if isinstance(val, bool):
        return "yes" if val else "no"
    if isinstance(val, float):
        if abs(val) >= 1000:
            return f"{val:,.0f}"
        return f"{val:.3g}" if abs(val) < 10 else f"{val:.1f}"
    if isinstance(val, int):
        return f"{val:,}"
    return str(val)


def _median_of(values: list[Any]) -> Any:
    """The median of numbers (dicts: field by field); for anything else, the first value."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        keys = dict.fromkeys(k for v in present for k in v)
        return {k: _median_of([v.get(k) for v in present]) for k in keys}
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        m = statistics.median(present)
        if all(isinstance(v, int) for v in present) and float(m).is_integer():
            return int(m)
        return round(float(m), 4)
    if all(isinstance(v, bool) for v in present):
        return sum(present) * 2 > len(present)  # a flag set in most runs
    return present[0]


def _group_key(row: Row) -> tuple[Any, ...]:
    return (
        row.get("kind"),
        row.get("scenario"),
        row.get("server"),
        row.get("a"),
        row.get("b"),
        row.get("rate"),
    )


def medians(rows: Iterable[Row]) -> list[Row]:
    """One row per (kind, scenario, server or pair, rate): the median of each figure over
    its repeats, in first-seen order, with `runs` (how many) and, for µs per delivery, the
    lowest and highest seen. Rows other than results and ratios are left out."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        if r.get("kind") in ("result", "ratio"):
            groups.setdefault(_group_key(r), []).append(r)
    out = []
    for same in groups.values():
        keys = dict.fromkeys(k for r in same for k in r if k != "round")
        row = {k: _median_of([r.get(k) for r in same]) for k in keys}
        row["runs"] = len(same)
        us = [r["us_per_delivery"] for r in same if r.get("us_per_delivery") is not None]
        if len(us) > 1:
            row["us_per_delivery_range"] = [min(us), max(us)]
        noisy = sum(bool(r.get("noisy")) for r in same)
        row["noisy"] = noisy * 2 > len(same)
        row["noisy_runs"] = noisy
        row["saturated_runs"] = sum(bool(r.get("loadgen_saturated")) for r in same)
        out.append(row)
    return out


def _pct(key: str, digits: int = 0) -> Callable[[Row], str]:
    return lambda r: "–" if _get(r, key) is None else f"{100 * _get(r, key):.{digits}f}%"


def _flags(row: Row) -> str:
    out = []
    saturated = row.get("saturated_runs")
    if saturated and saturated < row.get("runs", 1):
        out.append(f"loadgen saturated in {saturated} of {row['runs']} runs")
    elif row.get("loadgen_saturated") or saturated:
        out.append("loadgen saturated")
    if row.get("noisy_runs"):
        out.append(f"noisy machine in {row['noisy_runs']} of {row['runs']} runs")
    elif row.get("noisy"):
        out.append("noisy machine")
    if row.get("drained") is False:
        out.append("not drained")
    if row.get("presence_settled") is False:
        out.append("presence not settled")
    if row.get("closed"):
        out.append(f"closed {row.get('close_codes')}")
    if row.get("error"):
        out.append(f"error: {row['error'].splitlines()[0]}")
    return ", ".join(out)


Column = tuple[str, "str | Callable[[Row], str]"]


def table(rows: Iterable[Row], columns: list[Column]) -> str:
    rows = list(rows)
    if not rows:
        return "_(not run)_\n"
    lines = ["| " + " | ".join(h for h, _ in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        cells = [c(r) if callable(c) else _fmt(_get(r, c)) for _, c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


FANOUT: list[Column] = [
    ("msg/s", "rate"),
    ("server", "server"),
    ("delivered/s", "delivered_rate"),
    ("lost", "lost"),
    ("undelivered", "undelivered"),
    ("dup", "duplicates"),
    ("reord", "reordered"),
    ("p50 ms", "latency_ms.p50"),
    ("p90 ms", "latency_ms.p90"),
    ("p99 ms", "latency_ms.p99"),
    ("max ms", "latency_ms.max"),
    ("server CPU", _pct("server_cpu_util")),
    ("µs/delivery", "us_per_delivery"),
    ("KB/conn", "rss_per_conn_kb"),
    ("loadgen CPU", _pct("loadgen_cpu_util")),
    ("notes", _flags),
]
RATIOS: list[Column] = [
    ("msg/s", "rate"),
    ("a / b", lambda r: f"{r['a']} / {r['b']}"),
    ("delivered/s", "delivered_rate"),
    ("µs/delivery", "us_per_delivery"),
    ("p50", "latency_p50"),
    ("p99", "latency_p99"),
    ("KB/conn", "rss_per_conn_kb"),
]
IDLE: list[Column] = [
    ("server", "server"),
    ("connections", "clients"),
    ("setup s", "setup_s"),
    ("RSS before MB", "server_rss_base_mb"),
    ("RSS after MB", "server_rss_mb"),
    ("KB/conn", "rss_per_conn_kb"),
    ("idle CPU", lambda r: f"{100 * (r.get('server_cpu_util') or 0):.1f}%"),
    ("notes", _flags),
]
STORM: list[Column] = [
    ("server", "server"),
    ("all joined s", "joined_s"),
    ("settled s", "settle_s"),
    ("presence frames", "presence_frames"),
    ("frames", "frames"),
    ("MB sent", lambda r: _fmt((r.get("bytes") or 0) / 1e6)),
    ("server CPU s", "server_cpu_s"),
    ("loadgen CPU s", "loadgen_cpu_s"),
    ("notes", _flags),
]

API_PUBLISH: list[Column] = [
    ("publisher", "server"),
    ("in flight", "concurrency"),
    ("msg/s", "offered_rate"),
    ("delivered/s", "delivered_rate"),
    ("lost", "lost"),
    ("server CPU", _pct("server_cpu_util")),
    ("µs/message", "us_per_message"),
    ("µs/delivery", "us_per_delivery"),
    ("request p50 ms", "request_ms.p50"),
    ("request p99 ms", "request_ms.p99"),
    ("p50 ms", "latency_ms.p50"),
    ("p99 ms", "latency_ms.p99"),
    ("loadgen CPU", _pct("loadgen_cpu_util")),
    ("notes", _flags),
]


def _runs(row: Row) -> str:
    return str(row.get("runs", 1))


def render(rows: list[Row]) -> str:
    collapsed = medians(rows)
    repeated = any(r["runs"] > 1 for r in collapsed)
    results = [r for r in collapsed if r.get("kind") == "result"]
    ratios = [r for r in collapsed if r.get("kind") == "ratio"]
    machine = next((r for r in rows if r.get("kind") == "machine"), None)

    def of(sc: str) -> list[Row]:
        return [r for r in results if r["scenario"] == sc]

    def ratios_of(sc: str) -> list[Row]:
        return [r for r in ratios if r["scenario"] == sc]

    out = []
    if machine:
        pin = machine.get("pinned")
        out.append(
            f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
            f"{machine.get('memory_gb')} GB, Linux {machine.get('kernel')}, "
            f"Python {machine.get('python')}, aiohttp {machine.get('aiohttp')}, "
            f"commit {machine.get('commit')}; "
            + (
                f"servers on core {pin['servers']}, load generator on core {pin['loadgen']}"
                if pin
                else "not pinned"
            )
            + f"; {machine.get('time')}.\n"
        )
    fanout, ratio_cols, idle, storm = FANOUT, RATIOS, IDLE, STORM
    if repeated:
        out.append(
            "Every figure is the median over its runs (column `runs`); a ratio is the median "
            "of the ratios of runs measured back to back.\n"
        )
        runs: Column = ("runs", _runs)
        spread: Column = (
            "µs/delivery min–max",
            lambda r: "–".join(_fmt(x) for x in r.get("us_per_delivery_range") or []) or "–",
        )
        fanout = [*FANOUT[:-1], spread, runs, FANOUT[-1]]
        ratio_cols, idle, storm = [*RATIOS, runs], [*IDLE[:-1], runs, IDLE[-1]], [*STORM, runs]
    out += ["### S1 fan-out: 1 room × 1000 clients\n", table(of("S1"), fanout)]
    out += ["Ratios (a / b):\n", table(ratios_of("S1"), ratio_cols)]
    out += ["### S2 many rooms: 200 rooms × 10 clients, all publish\n", table(of("S2"), fanout)]
    out += [table(ratios_of("S2"), ratio_cols)]
    out += ["### S3 idle memory: 5,000 connections in 500 rooms\n", table(of("S3"), idle)]
    out += ["### S4 two gochat nodes through Redis\n", table(of("S4"), fanout)]
    out += [table(ratios_of("S4"), ratio_cols)]
    out += ["### S5 join storm: 1,000 clients join one room within 1 s\n", table(of("S5"), storm)]
    if of("S6"):
        out += [
            "### S6 `--workers 2` against two separately started nodes (S4's work)\n",
            table(of("S6"), [*fanout[:-1], ("supervisor CPU s", "supervisor_cpu_s"), fanout[-1]]),
            table(ratios_of("S6"), ratio_cols),
        ]
    if of("S7"):
        redis_cols: list[Column] = [
            ("Redis CPU", _pct("redis_cpu_util", 1)),
            ("Redis µs/delivery", "redis_us_per_delivery"),
            ("Redis µs/message", "redis_us_per_message"),
            ("busiest redis-server", _pct("redis_max_cpu_util", 1)),
            ("Redis idle CPU", _pct("redis_idle_cpu_util", 1)),
        ]
        out += [
            "### S7 two gochat nodes on one Redis and on a 3-master Redis Cluster (S4; and S2's "
            "200 rooms)\n",
            table(
                of("S7"), [*fanout[:1], ("rooms", "rooms"), *fanout[1:-1], *redis_cols, fanout[-1]]
            ),
            table(ratios_of("S7"), [*ratio_cols, ("Redis µs/delivery", "redis_us_per_delivery")]),
        ]
    if of("API"):
        members = of("API")[0].get("clients")
        out += [
            f"### API publish: server API vs WebSocket publisher, {members} members\n",
            table(of("API"), API_PUBLISH if not repeated else [*API_PUBLISH, ("runs", _runs)]),
            table(ratios_of("API"), ratio_cols),
        ]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="JSON lines files (default: standard input)")
    args = p.parse_args()
    rows: list[Row] = []
    sources = [open(f) for f in args.files] if args.files else [sys.stdin]
    for src in sources:
        with src:
            rows += [json.loads(line) for line in src if line.strip().startswith("{")]
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

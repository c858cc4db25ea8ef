"""Turn the JSON lines of bench/run.py into the Markdown tables of docs/performance.md.

python bench/run.py --out results.jsonl && python bench/report.py results.jsonl
"""

from __future__ import annotations

import argparse
import json
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


def _pct(key: str) -> Callable[[Row], str]:
    return lambda r: "–" if _get(r, key) is None else f"{100 * _get(r, key):.0f}%"


def _flags(row: Row) -> str:
    out = []
    if row.get("loadgen_saturated"):
        out.append("loadgen saturated")
    if row.get("noisy"):
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


def render(rows: list[Row]) -> str:
    results = [r for r in rows if r.get("kind") == "result"]
    ratios = [r for r in rows if r.get("kind") == "ratio"]
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
    out += ["### S1 fan-out: 1 room × 1000 clients\n", table(of("S1"), FANOUT)]
    out += ["Ratios (a / b):\n", table(ratios_of("S1"), RATIOS)]
    out += ["### S2 many rooms: 200 rooms × 10 clients, all publish\n", table(of("S2"), FANOUT)]
    out += [table(ratios_of("S2"), RATIOS)]
    out += ["### S3 idle memory: 5,000 connections in 500 rooms\n", table(of("S3"), IDLE)]
    out += ["### S4 two gochat nodes through Redis\n", table(of("S4"), FANOUT)]
    out += [table(ratios_of("S4"), RATIOS)]
    out += ["### S5 join storm: 1,000 clients join one room within 1 s\n", table(of("S5"), STORM)]
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

"""The console's charts: the cluster's load over the last 15 minutes, a sample every 2 s.

Each node measures its own rates (`LoadMeter`: chat messages its clients published and
frames it wrote to its clients, per second since the previous sample) and describes them in
its `node_info`, which reaches the other nodes with its heartbeat. A console sums every live
node's figures (`cluster_sample`) into its own ring (`LoadRing`), so another node's share is
as old as its last heartbeat (2.5 s by default).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

SAMPLE_EVERY = 2.0  # seconds between samples
WINDOW = 900.0  # seconds of samples kept (15 minutes)
FIELDS = ("t", "connections", "messages", "deliveries", "nodes")

Sample = tuple[float, int, float, float, int]
"""(time, connections, chat messages/s, frames delivered/s, live nodes), cluster-wide."""


class LoadMeter:
    """This node's rates: the growth of two counters between readings, per second."""

    def __init__(self) -> None:
        self._last: tuple[float, int, int] | None = None
        self.messages = 0.0  # chat messages published by this node's clients, per second
        self.deliveries = 0.0  # frames written to this node's clients, per second

    def read(self, now: float, published: int, frames_out: int) -> None:
        last, self._last = self._last, (now, published, frames_out)
        if last is None or now <= last[0]:
            self.messages = self.deliveries = 0.0  # first reading, or the clock went back
            return
        elapsed = now - last[0]
        self.messages = max(0, published - last[1]) / elapsed
        self.deliveries = max(0, frames_out - last[2]) / elapsed


def cluster_sample(now: float, nodes: Iterable[dict[str, Any]]) -> Sample:
    """One sample from the nodes table: each node's connections and rates, summed (a node
    that does not report a figure counts 0 for it)."""
    connections, messages, deliveries, count = 0.0, 0.0, 0.0, 0
    for node in nodes:
        count += 1
        connections += _number(node.get("connections"))
        messages += _number(node.get("msg_rate"))
        deliveries += _number(node.get("delivery_rate"))
    return (round(now, 3), int(connections), round(messages, 2), round(deliveries, 2), count)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and value >= 0 else 0.0


class LoadRing:
    """The last `window` seconds of samples, oldest first."""

    def __init__(self, every: float = SAMPLE_EVERY, window: float = WINDOW) -> None:
        self.every = every
        self.window = window
        self._samples: deque[Sample] = deque(maxlen=int(window / every))

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: Sample) -> None:
        if self._samples and sample[0] <= self._samples[-1][0]:
            self._samples.clear()  # the clock went back: a chart cannot draw it
        self._samples.append(sample)

    def latest(self) -> Sample | None:
        return self._samples[-1] if self._samples else None

    def to_json(self) -> dict[str, Any]:
        """What the snapshot carries: the interval, the window, the fields' names and every
        sample as a list in that order."""
        return {
            "every": self.every,
            "window": self.window,
            "fields": list(FIELDS),
            "samples": [list(s) for s in self._samples],
        }

"""`/metrics`: Prometheus text format from a per-app registry (never the global one, so
several apps in one process, as in the tests, keep separate numbers).

Counts are read from the Hub's own counters when Prometheus scrapes, so the chat path pays
nothing for them; only the fan-out latency histogram is observed per chat message, into plain
counts (a bisect and two additions) that a collector turns into the Prometheus family at scrape
time: prometheus_client's `Histogram.observe` takes a lock per bucket touched, which cost a
chat message about as much as decoding it.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..brokers.base import Broker
from ..chat.hub import Hub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# ms-resolution timestamps: below 1 ms everything lands in the first bucket
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# `,"ts":` can only be a key: inside a JSON string every `"` is escaped.
_TS = re.compile(rb',"ts":(\d+)')


def message_ts_ms(wire: bytes) -> int | None:
    """The `ts` of a chat message's wire JSON without decoding it."""
    m = _TS.search(wire)
    return int(m[1]) if m is not None else None


class LatencyHistogram(Collector):
    """A histogram of seconds with fixed buckets, observed on the fan-out path."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def collect(self) -> Iterator[Metric]:
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            cumulative.append((_le(bound), running))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=cumulative, sum_value=self.sum
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class HubCollector(Collector):
    """Gauges and counters read from the Hub at scrape time."""

    def __init__(self, hub: Hub, broker: Broker) -> None:
        self.hub = hub
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        stats = hub.stats
        clients = list(hub.clients.values())
        yield GaugeMetricFamily(
            "gochat_connections", "Open chat connections on this node", value=len(clients)
        )
        yield GaugeMetricFamily(
            "gochat_rooms", "Rooms with members on this node", value=len(hub.rooms)
        )
        yield CounterMetricFamily(
            "gochat_connections_accepted", "Chat connections accepted", value=stats.connections
        )
        yield CounterMetricFamily(
            "gochat_messages_in",
            "Frames received from chat clients",
            value=stats.messages_in_closed + sum(c.msgs_in for c in clients),
        )
        yield CounterMetricFamily(
            "gochat_messages_inline",
            "Chat frames handled in aiohttp's data callback, without waking the connection's "
            "task (GOCHAT_FAST_PATHS)",
            value=stats.inline,
        )
        yield CounterMetricFamily(
            "gochat_messages_out", "Frames written to chat clients", value=hub.frames_out
        )
        yield CounterMetricFamily(
            "gochat_socket_writes",
            "Socket writes that carried those frames (one per client per tick: frames per "
            "write above 1 means coalescing)",
            value=hub.socket_writes,
        )
        yield CounterMetricFamily(
            "gochat_messages_published",
            "Chat messages published by clients of this node",
            value=stats.published,
        )
        yield CounterMetricFamily(
            "gochat_messages_repeated",
            "Chat messages not published again because their sender had published their cid "
            "in that room already (answered with the first message)",
            value=stats.repeated,
        )
        yield CounterMetricFamily(
            "gochat_room_messages_delivered",
            "Room messages (chat and presence) handed to this node's members",
            value=stats.delivered,
        )
        errors = CounterMetricFamily(
            "gochat_errors", "Error frames sent to clients, by code", labels=["code"]
        )
        for code, value in sorted(stats.errors.items()):
            errors.add_metric([code], value)
        yield errors
        yield CounterMetricFamily(
            "gochat_bad_envelopes",
            "Malformed messages from the broker dropped before reaching clients",
            value=stats.bad_envelopes,
        )
        yield CounterMetricFamily(
            "gochat_slow_consumer_closes",
            "Connections closed with 1013 because their unsent bytes passed the limit",
            value=stats.slow_consumer_closes,
        )
        yield CounterMetricFamily(
            "gochat_write_timeout_closes",
            "Connections closed with 1013 because their backlog did not drain in time",
            value=stats.write_timeout_closes,
        )
        yield CounterMetricFamily(
            "gochat_resync_closes",
            "Connections closed with 1013 because this node missed more of a room's "
            "messages than its history holds (they rejoin with since)",
            value=stats.resync_closes,
        )
        yield CounterMetricFamily(
            "gochat_heartbeat_aborts",
            "Connections aborted because they answered no ping",
            value=stats.heartbeat_aborts,
        )
        yield CounterMetricFamily(
            "gochat_broker_reconnects",
            "Times the broker came back after being unavailable",
            value=max(0, stats.broker_ups - 1),
        )
        yield GaugeMetricFamily(
            "gochat_broker_up", "1 while the broker is usable", value=int(self.broker.ready)
        )
        for name, (value, meaning) in self.broker.counters().items():
            yield CounterMetricFamily(f"gochat_broker_{name}", meaning, value=value)


class Metrics:
    """One app's registry: the Hub collector and the fan-out latency histogram."""

    def __init__(self, hub: Hub, broker: Broker) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(HubCollector(hub, broker))
        self.fanout = LatencyHistogram(
            "gochat_fanout_latency_seconds",
            "From a chat message's timestamp (set when it was accepted) to its hand-off "
            "to this node's members",
            LATENCY_BUCKETS,
        )
        self.registry.register(self.fanout)
        hub.delivery.on_fanout(self.observe)

    def observe(self, wire: bytes) -> None:
        ts = message_ts_ms(wire)
        if ts is not None:
            self.fanout.observe(max(0.0, time.time() - ts / 1000))

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""`/metrics`: Prometheus text format from a per-app registry (never the global one, so
several apps in one process, as in the tests, keep separate numbers).

Counts are read from the Hub's own counters when Prometheus scrapes, so the chat path pays
nothing for them; only the fan-out latency histogram is observed per chat message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .brokers.base import Broker
from .hub import Hub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# ms-resolution timestamps: below 1 ms everything lands in the first bucket
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_TS_KEY = b',"ts":'


def message_ts_ms(wire: bytes) -> int | None:
    """The `ts` of a chat message's wire JSON without decoding it.

    `,"ts":` can only be a key: inside a JSON string every `"` is escaped.
    """
    at = wire.rfind(_TS_KEY)
    if at < 0:
        return None
    start = at + len(_TS_KEY)
    end = start
    while end < len(wire) and 48 <= wire[end] <= 57:
        end += 1
    return int(wire[start:end]) if end > start else None


class HubCollector(Collector):
    """Gauges and counters read from the Hub at scrape time."""

    def __init__(self, hub: Hub, broker: Broker) -> None:
        self.hub = hub
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        counters = hub.counters
        clients = list(hub.clients.values())
        yield GaugeMetricFamily(
            "gochat_connections", "Open chat connections on this node", value=len(clients)
        )
        yield GaugeMetricFamily(
            "gochat_rooms", "Rooms with members on this node", value=len(hub.rooms)
        )
        yield CounterMetricFamily(
            "gochat_messages_in",
            "Frames received from chat clients",
            value=counters["msgs_in_closed"] + sum(c.msgs_in for c in clients),
        )
        yield CounterMetricFamily(
            "gochat_messages_out",
            "Frames written to chat clients",
            value=hub.outbox.frames,
        )
        yield CounterMetricFamily(
            "gochat_messages_published",
            "Chat messages published by clients of this node",
            value=counters["published"],
        )
        errors = CounterMetricFamily(
            "gochat_errors", "Error frames sent to clients, by code", labels=["code"]
        )
        for key, value in sorted(counters.items()):
            if key.startswith("error:"):
                errors.add_metric([key[6:]], value)
        yield errors
        yield CounterMetricFamily(
            "gochat_bad_envelopes",
            "Malformed messages from the broker dropped before reaching clients",
            value=counters["bad_envelope"],
        )
        yield CounterMetricFamily(
            "gochat_slow_consumer_closes",
            "Connections closed with 1013 because their unsent bytes passed the limit",
            value=counters["slow_consumer"],
        )
        yield CounterMetricFamily(
            "gochat_write_timeout_closes",
            "Connections closed with 1013 because their backlog did not drain in time",
            value=counters["write_timeout"],
        )
        yield CounterMetricFamily(
            "gochat_broker_reconnects",
            "Times the broker came back after being unavailable",
            value=max(0, counters["broker_up"] - 1),
        )
        yield GaugeMetricFamily(
            "gochat_broker_up", "1 while the broker is usable", value=int(self.broker.ready)
        )


class Metrics:
    """One app's registry: the Hub collector and the fan-out latency histogram."""

    def __init__(self, hub: Hub, broker: Broker) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(HubCollector(hub, broker))
        self.fanout = Histogram(
            "gochat_fanout_latency_seconds",
            "From a chat message's timestamp (set when it was accepted) to its hand-off "
            "to this node's members",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        hub.on_fanout = self.observe

    def observe(self, wire: bytes) -> None:
        ts = message_ts_ms(wire)
        if ts is not None:
            self.fanout.observe(max(0.0, time.time() - ts / 1000))

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""The console's state on one node: viewers of the event stream, the cluster events channel,
operator actions (kick, notice) and the snapshot behind the live tables.

Cluster events. Every node's tap gets one sink (`_share`) that shows its events to the local
viewers and publishes them on the broker's events channel; `cluster_event` receives every
node's events, skips its own (already shown, and shown even while Redis is down) and hands
the others to the local viewers only, never back to the tap, so nothing loops. The sink
is attached only while some console in the cluster is watching (viewers announce themselves
with a WATCH control message every few seconds), so a cluster nobody watches pays one
attribute test per event. Control messages (WATCH, KICK_REQUEST, REVOKE) travel on the same
channel; envelopes start with `e` (event) or `c` (control).

Snapshot scope: the nodes table covers the whole cluster (`broker.nodes()`); the connection
and room tables list this node's connections and rooms (members counted cluster-wide),
since a node can only enumerate its own sockets. Each node's row says how many it holds.
The charts' samples (load.py) are taken by the same ticker and sent to the viewers that
asked for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..brokers.base import Broker, BrokerUnavailable, chat_suffix
from ..chat.client import Client
from ..chat.hub import Hub
from ..config import Settings
from ..events import Event, EventFilter, EventTap, Feed, loggable
from ..protocol import CloseCode, ProtocolError, check_room, check_text
from .auth import ConsoleAuth
from .load import SAMPLE_EVERY, LoadMeter, LoadRing, Sample, cluster_sample
from .tables import Tables

log = logging.getLogger(__name__)

WATCH_TTL = 15.0  # seconds a WATCH keeps every node publishing its events
FEED_SIZE = 2000  # lines queued per viewer before the oldest are dropped
SEND_INTERVAL = 0.05  # a viewer gets at most one frame per this many seconds
RATE_WINDOW = 5  # seconds over which a room's messages per second are averaged
SYSTEM_USER = "system"
MAX_REASON_BYTES = 120  # a WebSocket close reason must fit in 123 bytes
TICK = 1.0  # seconds between ticks
SAMPLES_QUEUED = 30  # samples held for a viewer that is not reading (a minute)


def rss_bytes() -> int:
    """Resident memory of this process (current, from /proc; peak where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def clip_reason(reason: str) -> str:
    """A close reason cut to what a close frame carries, never inside a character."""
    return reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


Batch = tuple[list[dict[str, Any]], int, list[Sample]]
"""What a viewer is sent at once: event lines, how many it lost, chart samples."""


@dataclass(eq=False)
class Viewer:
    """One console watching the event stream, over a WebSocket or (`ws` None) Server-Sent
    Events, whose handler ends the stream when `closing` is set and sets `ended` when done.
    A viewer that `wants_samples` also gets each chart sample (they bypass the filter)."""

    ws: web.WebSocketResponse | None
    feed: Feed = field(default_factory=lambda: Feed(FEED_SIZE))
    filter: EventFilter = field(default_factory=EventFilter)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    wants_samples: bool = False
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=SAMPLES_QUEUED))
    _sampled: asyncio.Event = field(default_factory=asyncio.Event)

    def push_sample(self, sample: Sample) -> None:
        self.samples.append(sample)
        self._sampled.set()

    async def take(self) -> Batch:
        """Wait for lines or a sample; return what is queued of both."""
        if not self.wants_samples:
            return (*await self.feed.take(), [])
        events: list[dict[str, Any]] = []
        dropped = 0
        if not self.samples:
            take = asyncio.ensure_future(self.feed.take())
            sampled = asyncio.ensure_future(self._sampled.wait())
            try:
                await asyncio.wait((take, sampled), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sampled.cancel()
                if not take.done():
                    take.cancel()  # before it took anything: the lines stay queued
                    with suppress(asyncio.CancelledError):
                        await take
            if take.done() and not take.cancelled():
                events, dropped = take.result()
        self._sampled.clear()
        samples = list(self.samples)
        self.samples.clear()
        return events, dropped, samples

    async def close(self) -> None:
        """On shutdown: close 1001 (WebSocket) or a last `close` event (SSE, its handler's)."""
        if self.ws is not None:
            await self.ws.close(code=CloseCode.GOING_AWAY, message=b"server shutting down")
        else:
            self.closing.set()
            await self.ended.wait()


class Console:
    """The operations console on this node (one per app)."""

    def __init__(
        self, settings: Settings, hub: Hub, broker: Broker, tap: EventTap, token: str
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.hub = hub
        self.broker = broker
        self.tap = tap
        self.auth = ConsoleAuth(token)
        self.viewers: set[Viewer] = set()
        self._watched_until = 0.0
        self._announced = 0.0
        self._sharing = False
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=RATE_WINDOW + 1)
        self.meter = LoadMeter()
        self.load = LoadRing()
        self._next_sample = 0.0
        self.tables = Tables(settings, hub, broker, self.room_rate, self.node_info, self.user_agent)
        broker.attach_cluster(self)

    # --- cluster events channel ----------------------------------------------------------

    def _share(self, event: Event) -> None:
        """Tap sink: show one local event to this node's viewers and put it on the cluster's
        events channel for the others'.

        Local viewers get it here rather than back from the channel, so a console keeps
        seeing its own node (BROKER_DOWN first of all) while Redis is unreachable.
        """
        data = event.to_dict(line=False)  # receivers build the line; the channel carries less
        self.broker.publish_event(b"e" + json.dumps(data, separators=(",", ":")).encode())
        if self.viewers:
            self._show(data)

    def _control(self, ctl: str, **fields: Any) -> None:
        body = {"ctl": ctl, "from": self.node_id, **fields}
        self.broker.publish_event(b"c" + json.dumps(body, separators=(",", ":")).encode())

    def cluster_event(self, data: bytes) -> None:
        """Broker callback for every message on the events channel, from every node."""
        try:
            if data[:1] == b"e":
                if self.viewers:
                    event = json.loads(data[1:])
                    if event["node"] != self.node_id:  # our own were shown by _share
                        self._show(event)
            elif data[:1] == b"c":
                self._on_control(json.loads(data[1:]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed message on the events channel")

    def _show(self, data: dict[str, Any]) -> None:
        event: dict[str, Any] | None = None
        for viewer in self.viewers:
            if viewer.filter.wants(data):  # cheap checks first: most filters drop most events
                if event is None:
                    event = Event.from_dict(data).to_dict()
                if viewer.filter.matches(event):
                    viewer.feed.push(event)

    def _on_control(self, body: dict[str, Any]) -> None:
        ctl = body["ctl"]
        now = time.time()
        if ctl == "WATCH":
            self._watched_until = max(self._watched_until, now + min(float(body["ttl"]), 60.0))
            if not self._sharing:
                self._sharing = True
                self.tap.attach(self._share)
        elif ctl == "KICK_REQUEST":
            client = self.hub.clients.get(str(body["conn"]))
            if client is not None:
                self._kick_local(client, str(body["reason"]), str(body["by"]))
        elif ctl == "REVOKE":
            self.auth.revoke(str(body["sid"]), float(body["expires"]), now)

    def _announce_watch(self, now: float) -> None:
        self._announced = now
        self._control("WATCH", ttl=WATCH_TTL)

    def add_viewer(self, viewer: Viewer) -> None:
        self.viewers.add(viewer)
        now = time.time()
        self._announce_watch(now)
        # this node shares at once, without waiting for its WATCH to come back (it does not
        # while Redis is unreachable)
        self._on_control({"ctl": "WATCH", "ttl": WATCH_TTL})

    def remove_viewer(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    def tick(self, now: float) -> None:
        """Once a second: keep the cluster publishing while we watch, sample room rates."""
        if self.viewers and now - self._announced >= WATCH_TTL / 3:
            self._announce_watch(now)
        if self._sharing and now > self._watched_until:
            self._sharing = False
            self.tap.detach(self._share)
        self._samples.append((now, self.hub.delivery.room_message_counts()))

    def room_rate(self, room: str) -> float:
        """Chat messages per second in `room` over the last few seconds."""
        if len(self._samples) < 2:
            return 0.0
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return 0.0
        return max(0, last.get(room, 0) - first.get(room, 0)) / (t1 - t0)

    async def sample(self, now: float) -> Sample:
        """Every SAMPLE_EVERY seconds: this node's rates, then the cluster's load (every
        live node's figures, summed) into the ring and to the viewers that want it."""
        self.meter.read(now, self.hub.stats.published, self.hub.frames_out)
        try:
            async with asyncio.timeout(self.load.every / 2):  # a hung Redis skips a beat
                nodes = await self.tables.nodes()
        except TimeoutError:
            nodes = [{"id": self.node_id, **self.node_info()}]
        sample = cluster_sample(now, nodes)
        self.load.add(sample)
        for viewer in self.viewers:
            if viewer.wants_samples:
                viewer.push_sample(sample)
        return sample

    @asynccontextmanager
    async def ticker_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the once-a-second tick and the charts' samples, kept and awaited
        on shutdown."""

        async def run() -> None:
            while True:
                now = time.time()
                self.tick(now)
                if now >= self._next_sample:
                    self._next_sample = now + SAMPLE_EVERY - TICK / 2
                    try:
                        await self.sample(now)
                    except Exception:  # a chart must never stop the WATCH announcements
                        log.exception("console: the load sample failed")
                await asyncio.sleep(TICK)

        task = asyncio.get_running_loop().create_task(run())
        yield
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task

    async def close_viewers(self) -> None:
        """on_shutdown: every console stream gets 1001 (SSE: a `close` event), together,
        within the grace period."""
        closes = [asyncio.ensure_future(v.close()) for v in self.viewers]
        if closes:
            _, pending = await asyncio.wait(closes, timeout=max(self.settings.shutdown_grace, 0.5))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    # --- actions -------------------------------------------------------------------------

    def _kick_local(self, client: Client, reason: str, by: str) -> None:
        log.warning(
            "console %s kicked %s (%s): %s",
            loggable(by),
            client.id,
            loggable(client.user_id),
            loggable(reason),
        )
        self.tap.emit(
            "KICK", by, client.id, client.user_id, reason, conn=client.id, user=client.user_id
        )
        self.hub.drop(client, CloseCode.KICKED, reason)

    async def kick(self, conn_id: str, reason: str, by: str) -> str:
        """Close a connection with 4001 on whichever node holds it: "kicked" or "sent".

        Raises LookupError when no such connection (or node) is known, BrokerUnavailable
        when it would be on another node and the broker cannot carry the request now.
        """
        reason = clip_reason(reason.strip() or "kicked by an operator")
        client = self.hub.clients.get(conn_id)
        if client is not None:
            self._kick_local(client, reason, by)
            return "kicked"
        node = conn_id.rpartition("/")[0]
        if node != self.node_id and not self.broker.ready:
            # the request could not travel; "not found" would be a wrong answer
            raise BrokerUnavailable(self.broker.reason)
        if node == self.node_id or node not in {n.get("id") for n in await self.broker.nodes()}:
            raise LookupError(conn_id)
        self._control("KICK_REQUEST", conn=conn_id, reason=reason, by=by)
        return "sent"

    async def notice(self, room: str, text: str, by: str) -> tuple[str, int]:
        """Say `text` in `room` as the system user, to every member on every node: the
        message id and how many members the room had (cluster-wide, users)."""
        check_room(room, "notice")
        text = check_text(text, self.settings.max_text, "notice")
        fields: dict[str, Any] = {
            "room": room,
            "userId": SYSTEM_USER,
            "name": SYSTEM_USER,
            "text": text,
            "ts": time.time_ns() // 1_000_000,
            "system": True,  # a user may call themselves "system"; clients can tell
        }
        try:
            members = (await self.broker.member_counts([room])).get(room, 0)
            msg_id = await self.broker.publish(room, chat_suffix(fields))
        except BrokerUnavailable as exc:
            raise ProtocolError.unavailable(exc, "notice") from None
        log.warning(
            "console %s sent a notice to %s: %s", loggable(by), loggable(room), loggable(text)
        )
        self.tap.emit(
            "NOTICE",
            by,
            self.broker.channel(room),
            text,
            msg_id,
            room=room,
            user=SYSTEM_USER,
        )
        return msg_id, members

    async def members(self, room: str) -> dict[str, Any]:
        """A room's member count, cluster-wide (users), and this node's connections in it."""
        check_room(room, "room")
        try:
            counts = await self.broker.member_counts([room])
        except BrokerUnavailable as exc:
            raise ProtocolError.unavailable(exc, "room") from None
        local = len(self.hub.rooms.get(room, ()))
        return {"room": room, "members": counts.get(room, 0), "local": local}

    def logout(self, sid: str, expires: float) -> None:
        self.auth.revoke(sid, expires, time.time())
        self._control("REVOKE", sid=sid, expires=expires)

    # --- snapshot ------------------------------------------------------------------------

    def node_info(self) -> dict[str, Any]:
        now = time.time()
        return {
            "started": self.hub.started_at,
            "uptime": now - self.hub.started_at,
            "connections": len(self.hub.clients),
            "rooms": len(self.hub.rooms),
            "rss": rss_bytes(),
            "reason": self.broker.reason,
            "viewers": len(self.viewers),
            "msg_rate": round(self.meter.messages, 2),
            "delivery_rate": round(self.meter.deliveries, 2),
        }

    # --- user agents ---------------------------------------------------------------------

    def user_agent(self, client: Client) -> str | None:
        """The connection's User-Agent, None when it sent none."""
        return client.user_agent or None

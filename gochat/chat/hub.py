"""The Hub: this node's connections, and the parts that serve them.

It owns the connections (connect, disconnect, send, drop) and the shutdown, and wires the
parts: `memberships` (joins, leaves, rooms; memberships.py), `publisher` (a client's chat
message to the broker; publishing.py) and `delivery` (what the broker hands this node, out
to the members; delivery.py, the broker's listener). Refusals are `ProtocolError`s, which
ws.py turns into `error` frames; nothing here awaits a client (frames go through the
Outbox); every state change is reported to the event tap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from .. import protocol
from ..brokers.base import Broker
from ..config import Settings
from ..events import EventTap
from ..protocol import CloseCode, ProtocolError
from .client import Client
from .delivery import Delivery
from .memberships import Memberships
from .outbox import Outbox, text_frame
from .publishing import Publisher
from .stats import ChatStats

log = logging.getLogger(__name__)


class Hub:
    """This node's connections; the single place a connection starts and ends."""

    def __init__(self, settings: Settings, broker: Broker, tap: EventTap) -> None:
        self.settings = settings
        self.broker = broker
        self.tap = tap
        self.node_id = settings.node_id
        self.started_at = time.time()
        self.clients: dict[str, Client] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seq = 0
        self.per_ip: Counter[str] = Counter()
        self.outbox = Outbox(
            settings.send_buffer_bytes, self._overflow, settings.write_timeout, self._stuck
        )
        self.stats = ChatStats()
        self.closing = False
        self._shutdown_deadline: float | None = None
        self.memberships = Memberships(settings, broker, tap, self.send, self.send_frame)
        self.publisher = Publisher(settings, broker, tap, self.stats, self.send_error, self.send)
        self.delivery = Delivery(
            self.memberships, self.outbox, broker, tap, self.stats, self.drop, self._is_closing
        )
        broker.attach(self.delivery)

    @property
    def rooms(self) -> dict[str, dict[str, Client]]:
        """Subscribed rooms -> their local members (read-only to all but Memberships)."""
        return self.memberships.rooms

    def _is_closing(self) -> bool:
        return self.closing

    def shutdown_time_left(self, floor: float = 0.1) -> float:
        """What is left of GOCHAT_SHUTDOWN_GRACE since `shutdown` began (the whole grace
        before it; never below `floor`): the broker's stop, the last step, gets this."""
        if self._shutdown_deadline is None:
            return self.settings.shutdown_grace
        return max(floor, self._shutdown_deadline - asyncio.get_running_loop().time())

    # --- connections ---------------------------------------------------------------------

    def next_conn_id(self) -> str:
        self._seq += 1
        return f"{self.node_id}/{self._seq}"

    def connect(self, client: Client) -> None:
        """Register a new connection and greet it."""
        self.clients[client.id] = client
        ip = client.remote.rsplit(":", 1)[0]
        self.per_ip[ip] += 1
        self.stats.connections += 1
        self.send(client, protocol.welcome(client.user_id, client.name, self.node_id))
        self.tap.emit(  # the name too: an anonymous userId is a random string
            "CONNECT",
            client.remote,
            client.id,
            client.user_id,
            client.name,
            conn=client.id,
            user=client.user_id,
        )

    async def disconnect(self, client: Client, code: int | None = None) -> None:
        """Forget a connection: leave its rooms (presence `offline` where it was the last)."""
        if self.clients.pop(client.id, None) is None:
            return
        client.mark_closed(code)
        ip = client.remote.rsplit(":", 1)[0]
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
        self.stats.messages_in_closed += client.msgs_in
        for room in list(client.rooms):
            await self.memberships.remove(client, room, node_leaving=self.closing)
        self.tap.emit(
            "DISCONNECT",
            client.remote,
            client.id,
            str(client.close_code or ""),
            conn=client.id,
            user=client.user_id,
        )

    def send(self, client: Client, payload: bytes) -> None:
        """Send one encoded message to one client (never awaits)."""
        self.outbox.push(client, text_frame(payload))

    def send_frame(self, client: Client, frame: bytes) -> None:
        """Queue one ready WebSocket frame (a ping, a pong) behind what is queued already."""
        self.outbox.push(client, frame)

    def flush(self) -> None:
        """Write what is queued now rather than at the end of this tick."""
        self.outbox.flush()

    def send_error(self, client: Client, err: ProtocolError) -> None:
        self.stats.errors[err.code.value] += 1
        self.send(client, protocol.error(err.code, err.message, err.ref))
        self.tap.emit(
            "ERROR", client.remote, err.code.value, err.message, conn=client.id, user=client.user_id
        )

    def drop(self, client: Client, code: int, reason: str) -> None:
        """Close a connection from the server side (slow consumer, kick, policy)."""
        if client.closed:
            return
        client.mark_closed(code)
        self.outbox.discard(client)
        self.spawn(self._close(client, code, reason))

    def abort_dead(self, client: Client) -> None:
        """Abort a connection that answered no ping (heartbeat.py); its handler then tells
        the Hub, like any connection that ends."""
        self.stats.heartbeat_aborts += 1
        client.abort()

    async def _close(self, client: Client, code: int, reason: str) -> None:
        ws = client.ws
        if ws is None or ws.closed:
            return
        # drain=False: a slow consumer's buffer may never drain. The connection's handler
        # aborts the transport if the close frame is still unsent after the grace period.
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(
                ws.close(code=code, message=reason.encode()[:120], drain=False),
                timeout=max(self.settings.shutdown_grace, 0.5),
            )

    def _overflow(self, client: Client) -> None:
        self.stats.slow_consumer_closes += 1
        self._too_slow(client, "slow_consumer", "slow consumer")

    def _stuck(self, client: Client) -> None:
        self.stats.write_timeout_closes += 1
        self._too_slow(client, "write_timeout", "write timeout")

    def _too_slow(self, client: Client, counter: str, reason: str) -> None:
        """Close a client the Outbox cannot write to fast enough: 1013, tapped."""
        log.info("%s %s: %d bytes unsent", client.id, reason, client.buffered_bytes())
        self.tap.emit(
            "ERROR", client.remote, counter, "closed 1013", conn=client.id, user=client.user_id
        )
        self.drop(client, CloseCode.TRY_AGAIN, reason)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a coroutine the Hub keeps and awaits on shutdown (nothing fire-and-forget)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- what the Outbox did, for /metrics and the tests ---------------------------------

    @property
    def frames_out(self) -> int:
        """WebSocket frames written to clients since start."""
        return self.outbox.frames

    @property
    def socket_writes(self) -> int:
        """Socket writes that carried them (fewer than frames: coalescing)."""
        return self.outbox.writes

    def backlogged(self) -> int:
        """Connections with unsent bytes being timed (GOCHAT_WRITE_TIMEOUT)."""
        return self.outbox.backlogged()

    # --- shutdown ------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Close every client with 1001 and wait for every task the Hub started, all within
        GOCHAT_SHUTDOWN_GRACE.

        Clients go in batches of GOCHAT_SHUTDOWN_BATCH spread over the first half of the
        grace period (at most 1 s apart), so the clients of a big node do not all reconnect
        in the same instant; whatever was queued for a client is written before its close.
        """
        self.closing = True
        loop = asyncio.get_running_loop()
        grace = self.settings.shutdown_grace
        deadline = self._shutdown_deadline = loop.time() + grace
        size = self.settings.shutdown_batch
        clients = list(self.clients.values())
        batches = [clients[i : i + size] for i in range(0, len(clients), size)]
        gap = min(1.0, grace / 2 / (len(batches) - 1)) if len(batches) > 1 else 0.0
        for n, batch in enumerate(batches):
            if n:
                await asyncio.sleep(gap)
            self.outbox.flush()
            for client in batch:
                self.drop(client, CloseCode.GOING_AWAY, "server shutting down")
        self.outbox.flush()
        self.outbox.stop()
        if self._tasks:
            timeout = max(0.1, deadline - loop.time())
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

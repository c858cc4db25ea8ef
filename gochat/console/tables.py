"""The console's tables of this node: connections and rooms, a page at a time, and the
cluster's nodes. Read-only: what the snapshot (`/admin/api/snapshot`) shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..brokers.base import Broker, BrokerUnavailable
from ..chat.client import Client
from ..chat.hub import Hub
from ..config import Settings


class Tables:
    """Pages of this node's connections and rooms, and the cluster's nodes."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        broker: Broker,
        room_rate: Callable[[str], float],
        node_info: Callable[[], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.hub = hub
        self.broker = broker
        self.room_rate = room_rate  # Console.room_rate: messages/s over the last seconds
        self.node_info = node_info  # Console.node_info: this node, when the broker is down

    def connection_row(self, client: Client) -> dict[str, Any]:
        limit = self.settings.send_buffer_bytes
        buffered = client.buffered_bytes()
        return {
            "id": client.id,
            "node": self.node_id,
            "user": client.user_id,
            "name": client.name,
            "remote": client.remote,
            "rooms": sorted(client.rooms),
            "since": client.connected_at,
            "in": client.msgs_in,
            "out": client.msgs_out,
            "buffered": buffered,
            "fill": min(1.0, buffered / limit) if limit else 0.0,
        }

    def connections(self, q: str, page: int, limit: int) -> dict[str, Any]:
        """One page of this node's connections, filtered server-side by a substring."""
        clients: Any = self.hub.clients.values()
        if q:
            needle = q.lower()
            clients = [
                c
                for c in clients
                if needle in c.id.lower()
                or needle in c.user_id.lower()
                or needle in c.name.lower()
                or needle in c.remote
                or any(needle in r.lower() for r in c.rooms)
            ]
        else:
            clients = list(clients)
        start = page * limit
        return {
            "total": len(self.hub.clients),
            "matched": len(clients),
            "page": page,
            "limit": limit,
            "items": [self.connection_row(c) for c in clients[start : start + limit]],
        }

    async def rooms(self, q: str, page: int, limit: int) -> dict[str, Any]:
        """One page of this node's rooms with their cluster-wide member counts."""
        names = sorted(r for r in self.hub.rooms if q.lower() in r.lower())
        start = page * limit
        shown = names[start : start + limit]
        try:  # one round trip for the page: the console asks every second
            counts: dict[str, int] | None = await self.broker.member_counts(shown)
        except BrokerUnavailable:
            counts = None
        items = []
        for room in shown:
            items.append(
                {
                    "name": room,
                    "members": counts.get(room) if counts is not None else None,
                    "local": len(self.hub.rooms.get(room, ())),
                    "rate": round(self.room_rate(room), 2),
                }
            )
        return {
            "total": len(self.hub.rooms),
            "matched": len(names),
            "page": page,
            "limit": limit,
            "items": items,
        }

    async def nodes(self) -> list[dict[str, Any]]:
        try:
            return await self.broker.nodes()
        except BrokerUnavailable:
            return [{"id": self.node_id, **self.node_info(), "ready": False}]

"""The console's tables of this node: connections and rooms, a page at a time, sorted and
filtered on the server, one connection in detail, and the cluster's nodes. Read-only: what
the snapshot (`/admin/api/snapshot`) shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..brokers.base import Broker, BrokerUnavailable
from ..chat.client import Client
from ..chat.hub import Hub
from ..config import Settings


def _conn_number(client: Client) -> int:
    """The n of `node/n`: connections in the order they came."""
    n = client.id.rpartition("/")[2]
    return int(n) if n.isdigit() else 0


CONNECTION_SORTS: dict[str, Callable[[Client], Any]] = {
    "id": _conn_number,
    "user": lambda c: c.user_id.casefold(),
    "name": lambda c: c.name.casefold(),
    "remote": lambda c: c.remote,
    "rooms": lambda c: len(c.rooms),
    "since": lambda c: c.connected_at,
    "in": lambda c: c.msgs_in,
    "out": lambda c: c.msgs_out,
    "fill": lambda c: c.buffered_bytes(),
}
ROOM_SORTS = ("name", "members", "local", "rate")


def parse_sort(raw: str, allowed: Any) -> tuple[str, bool]:
    """`key` or `-key` (descending) -> (key, descending); "" is the table's natural order.
    Raises ValueError for a key not in `allowed`."""
    descending = raw.startswith("-")
    key = raw[1:] if descending else raw
    if key and key not in allowed:
        raise ValueError(f"cannot sort by {key!r}; one of: {', '.join(allowed)}")
    return key, descending


def _page(matched: int, page: int, limit: int) -> int:
    """`page`, or the last page when it is past the end (rows went since the URL was made)."""
    return min(page, max(0, (matched - 1) // limit))


class Tables:
    """Pages of this node's connections and rooms, and the cluster's nodes."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        broker: Broker,
        room_rate: Callable[[str], float],
        node_info: Callable[[], dict[str, Any]],
        user_agent: Callable[[Client], str | None],
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.hub = hub
        self.broker = broker
        self.room_rate = room_rate  # Console.room_rate: messages/s over the last seconds
        self.node_info = node_info  # Console.node_info: this node, when the broker is down
        self.user_agent = user_agent  # Console.user_agent

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

    def connections(self, q: str, page: int, limit: int, sort: str = "") -> dict[str, Any]:
        """One page of this node's connections, filtered server-side by a substring and
        sorted by `sort` (`key` or `-key`, see CONNECTION_SORTS; "" is connection order)."""
        key, descending = parse_sort(sort, CONNECTION_SORTS)
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
        if key:  # stable: ties stay in connection order
            clients.sort(key=CONNECTION_SORTS[key], reverse=descending)
        elif descending:
            clients.reverse()
        page = _page(len(clients), page, limit)
        start = page * limit
        return {
            "total": len(self.hub.clients),
            "matched": len(clients),
            "page": page,
            "limit": limit,
            "sort": sort,
            "items": [self.connection_row(c) for c in clients[start : start + limit]],
        }

    async def connection(self, conn_id: str) -> dict[str, Any] | None:
        """One connection of this node in detail (None when it is not here): its row, its
        User-Agent, the send-buffer limit and its rooms' member counts (cluster-wide)."""
        client = self.hub.clients.get(conn_id)
        if client is None:
            return None
        row = self.connection_row(client)
        try:
            members: dict[str, int] | None = await self.broker.member_counts(row["rooms"])
        except BrokerUnavailable:
            members = None
        row.update(
            agent=self.user_agent(client),
            limit=self.settings.send_buffer_bytes,
            members=members,
        )
        return row

    async def rooms(self, q: str, page: int, limit: int, sort: str = "") -> dict[str, Any]:
        """One page of this node's rooms with their cluster-wide member counts, sorted by
        `sort` (`key` or `-key`, one of ROOM_SORTS; "" is by name)."""
        key, descending = parse_sort(sort, ROOM_SORTS)
        names = sorted(r for r in self.hub.rooms if q.lower() in r.lower())
        counts: dict[str, int] | None
        if key == "members":  # every matched room's count, in one round trip
            counts = await self._member_counts(names)
            known = counts or {}
            names.sort(key=lambda r: known.get(r, -1), reverse=descending)
        elif key == "local":
            names.sort(key=lambda r: len(self.hub.rooms.get(r, ())), reverse=descending)
        elif key == "rate":
            names.sort(key=self.room_rate, reverse=descending)
        elif descending:
            names.reverse()
        page = _page(len(names), page, limit)
        start = page * limit
        shown = names[start : start + limit]
        if key != "members":  # one round trip for the page: the console asks every second
            counts = await self._member_counts(shown)
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
            "sort": sort,
            "items": items,
        }

    async def _member_counts(self, rooms: list[str]) -> dict[str, int] | None:
        """Cluster-wide member counts; None when the broker cannot answer now."""
        try:
            return await self.broker.member_counts(rooms)
        except BrokerUnavailable:
            return None

    async def nodes(self) -> list[dict[str, Any]]:
        try:
            return await self.broker.nodes()
        except BrokerUnavailable:
            return [{"id": self.node_id, **self.node_info(), "ready": False}]

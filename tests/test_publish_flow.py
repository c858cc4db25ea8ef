"""The Hub's side of publishing without waiting: unconfirmed messages, back-pressure, late
errors. A broker whose futures the test resolves by hand stands in for a slow Redis."""

from __future__ import annotations

import asyncio
import json

from gochat.brokers.base import BrokerUnavailable
from gochat.brokers.memory import MemoryBroker
from gochat.client import Client
from gochat.events import EventTap
from gochat.hub import MAX_IN_FLIGHT, Hub

from .conftest import make_settings


class HeldBroker(MemoryBroker):
    """In memory, but every chat message stays unconfirmed until the test says."""

    def __init__(self) -> None:
        super().__init__("n", 10)
        self.held: list[asyncio.Future[bytes]] = []

    def submit(self, room: str, suffix: bytes) -> asyncio.Future[bytes]:
        self._check()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.held.append(fut)
        return fut


class Socket:
    """A transport that keeps what is written."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


def frames(sock: Socket) -> list[dict[str, object]]:
    out, data = [], sock.data
    while data:  # short unmasked text frames, as text_frame builds them
        n = data[1]
        out.append(json.loads(data[2 : 2 + n]))
        data = data[2 + n :]
    return out


async def test_unconfirmed_messages_are_bounded_and_answered_late() -> None:
    broker = HeldBroker()
    await broker.start()
    hub = Hub(make_settings(), broker, EventTap("n"))
    sock = Socket()
    client = Client("c1", "u", "u", "127.0.0.1:1", None, sock)  # type: ignore[arg-type]
    hub.connect(client)
    await hub.join(client, "r")
    for i in range(MAX_IN_FLIGHT):  # each returns as soon as the broker has it
        await hub.say(client, "r", f"m{i}", cid=str(i))
    assert client.unconfirmed == MAX_IN_FLIGHT
    over = asyncio.ensure_future(hub.say(client, "r", "one too many", cid="over"))
    done, _ = await asyncio.wait([over], timeout=0.1)
    assert not done, "the reader must wait while the client has too many unconfirmed"

    broker.held[0].set_exception(BrokerUnavailable("redis down"))
    for fut in broker.held[1:]:
        fut.set_result(b"1-1")
    await asyncio.wait_for(over, 1)
    assert client.unconfirmed == 0
    assert hub.counters["published"] == MAX_IN_FLIGHT
    hub.outbox.flush()
    errors = [f for f in frames(sock) if f["type"] == "error"]
    assert errors == [{"type": "error", "code": "unavailable", "message": "redis down", "ref": "0"}]

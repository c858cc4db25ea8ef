"""The Hub's side of publishing without waiting: unconfirmed messages, back-pressure, late
errors. A broker whose futures the test resolves by hand stands in for a slow Redis."""

from __future__ import annotations

import asyncio
import json

from gochat.brokers.base import CHAT, CHAT_PREFIX, BrokerUnavailable, chat_suffix, split_envelope
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

    # the Broker contract lets submit return a future (Redis); MemoryBroker's returns the id
    def submit(self, room: str, suffix: bytes) -> asyncio.Future[bytes]:  # type: ignore[override]
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


async def test_the_memory_broker_hands_over_parts_or_an_envelope() -> None:
    """Bound with `on_local` (the Hub), a chat message arrives as its parts; without it, as
    the envelope a Redis listener would deliver, which splits into the same parts."""
    local: list[tuple[str, int, bytes, bytes]] = []
    envelopes: list[tuple[str, bytes]] = []
    with_parts, with_envelope = MemoryBroker("n", 10), MemoryBroker("n", 10)
    with_parts.bind(lambda room, env: True, on_local=lambda *parts: local.append(parts))

    def take_envelope(room: str, env: bytes) -> bool:
        envelopes.append((room, env))
        return True

    with_envelope.bind(take_envelope)
    for broker in (with_parts, with_envelope):
        await broker.start()
        await broker.subscribe("r")
        await broker.subscribe("other")
    suffix = chat_suffix({"room": "r", "userId": "u", "name": "U", "text": "hi", "ts": 1})
    ids = [broker.submit("r", suffix) for broker in (with_parts, with_envelope)]
    await with_parts.unsubscribe("other")
    await with_envelope.unsubscribe("other")
    assert with_parts.submit("other", suffix) and with_envelope.submit("other", suffix)

    assert [room for room, *_ in local] == ["r"]  # not to a room it does not receive
    assert [room for room, _ in envelopes] == ["r"]
    _, kind, key, wire = local[0]
    assert (kind, key, wire) == (CHAT, ids[0], CHAT_PREFIX + ids[0] + suffix)
    assert split_envelope(envelopes[0][1]) == (CHAT, ids[1], CHAT_PREFIX + ids[1] + suffix)

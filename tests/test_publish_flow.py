"""The Hub's side of publishing without waiting: unconfirmed messages, back-pressure, late
errors. A broker whose futures the test resolves by hand stands in for a slow Redis."""

from __future__ import annotations

import asyncio
import json

from gochat.brokers.base import (
    CHAT,
    CHAT_PREFIX,
    PRESENCE,
    BrokerUnavailable,
    chat_envelope,
    chat_suffix,
    split_envelope,
)
from gochat.brokers.memory import MemoryBroker
from gochat.chat.client import Client
from gochat.chat.hub import Hub
from gochat.chat.publishing import MAX_IN_FLIGHT
from gochat.events import EventTap

from .util import make_settings


class HeldBroker(MemoryBroker):
    """In memory, but every chat message stays unconfirmed until the test says."""

    def __init__(self) -> None:
        super().__init__("n", 10)
        self.held: list[asyncio.Future[bytes]] = []

    # the Broker contract lets submit return a future (Redis); MemoryBroker's returns the id
    def submit(  # type: ignore[override]
        self, room: str, suffix: bytes, dedupe: bytes | None = None
    ) -> asyncio.Future[bytes]:
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
    await hub.memberships.join(client, "r")
    for i in range(MAX_IN_FLIGHT):  # each returns as soon as the broker has it
        await hub.publisher.say(client, "r", f"m{i}", cid=str(i))
    assert client.unconfirmed == MAX_IN_FLIGHT
    over = asyncio.ensure_future(hub.publisher.say(client, "r", "one too many", cid="over"))
    done, _ = await asyncio.wait([over], timeout=0.1)
    assert not done, "the reader must wait while the client has too many unconfirmed"

    broker.held[0].set_exception(BrokerUnavailable("redis down"))
    for fut in broker.held[1:]:
        fut.set_result(b"1-1")
    await asyncio.wait_for(over, 1)
    assert client.unconfirmed == 0
    assert hub.stats.published == MAX_IN_FLIGHT
    hub.flush()
    errors = [f for f in frames(sock) if f["type"] == "error"]
    assert errors == [{"type": "error", "code": "unavailable", "message": "redis down", "ref": "0"}]


class Recorder:
    """A broker listener that keeps what it is given (brokers.base.BrokerListener)."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, int, bytes, bytes]] = []
        self.envelopes: list[tuple[str, bytes]] = []
        self.transitions: list[tuple[str, bytes]] = []

    def deliver(self, room: str, envelope: bytes) -> bool:
        self.envelopes.append((room, envelope))
        return True

    def fan_out(self, room: str, kind: int, key: bytes, wire: bytes) -> None:
        self.parts.append((room, kind, key, wire))

    def broker_state(self, ready: bool, reason: str) -> None:
        pass

    def presence_transition(self, room: str, envelope: bytes) -> None:
        self.transitions.append((room, envelope))

    def missed(self, room: str) -> None:
        pass


async def test_the_memory_broker_hands_over_a_chats_parts_and_presence_envelopes() -> None:
    """A chat message never leaves the process, so its parts are handed over (what its
    envelope, as a Redis listener delivers it, would split into); presence comes as an
    envelope, and is reported once as this node's transition. Only rooms it receives."""
    broker, seen = MemoryBroker("n", 10), Recorder()
    broker.attach(seen)
    await broker.start()
    await broker.subscribe("r")
    await broker.subscribe("other")
    await broker.unsubscribe("other")
    suffix = chat_suffix({"room": "r", "userId": "u", "name": "U", "text": "hi", "ts": 1})
    msg_id = broker.submit("r", suffix)
    assert broker.submit("other", suffix)
    await broker.presence_add("r", "c1", "u", "U")

    wire = CHAT_PREFIX + msg_id + suffix
    assert seen.parts == [("r", CHAT, msg_id, wire)]  # not to a room it does not receive
    assert split_envelope(chat_envelope(msg_id, wire)) == seen.parts[0][1:]
    ((room, envelope),) = seen.envelopes
    assert room == "r" and split_envelope(envelope)[:2] == (PRESENCE, b"u")
    assert seen.transitions == seen.envelopes
    assert broker.channel("r") == "gochat:room:r"

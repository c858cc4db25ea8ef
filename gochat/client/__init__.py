"""A Python client for gochat servers (asyncio, on aiohttp's client): docs/client.md.

    async with Client("http://localhost:8080", name="bot") as client:
        await client.join("lobby")
        chat = await client.send("lobby", "hello")   # the stored message, or raises Refused
        async for event in client:                   # Chat, Presence, Joined, Reconnecting...
            ...

It talks to the server only through the wire contract (docs/protocol.md): it imports
nothing of the server, so it can run where the server's dependencies are not installed.
"""

from .client import FINAL_CLOSE_CODES, Backoff, Client, ws_url
from .errors import ConnectError, ConnectionClosed, GochatError, Refused
from .frames import (
    Chat,
    Error,
    Event,
    Frame,
    Joined,
    Left,
    Member,
    Presence,
    Reconnecting,
    Unknown,
    Welcome,
    parse_frame,
)

__all__ = [
    "FINAL_CLOSE_CODES",
    "Backoff",
    "Chat",
    "Client",
    "ConnectError",
    "ConnectionClosed",
    "Error",
    "Event",
    "Frame",
    "GochatError",
    "Joined",
    "Left",
    "Member",
    "Presence",
    "Reconnecting",
    "Refused",
    "Unknown",
    "Welcome",
    "parse_frame",
    "ws_url",
]

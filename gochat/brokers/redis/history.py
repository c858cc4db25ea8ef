"""Reading the rooms' streams: a room's history for a joining client, its newest id for the
subscriber. (The publish script writes them: publisher.py.)"""

from __future__ import annotations

import re
from typing import Any

from ..base import CHAT_PREFIX, History
from .connection import Client

STREAM_ID = re.compile(rb"(\d{1,20})-(\d{1,20})")
MAX_PART = 2**64 - 1  # a stream id is two unsigned 64-bit numbers: Redis refuses more


def parse_id(raw: bytes) -> tuple[int, int] | None:
    """A stream id (b"1732740000123-0") as a comparable pair; None when it is not one Redis
    could have given (a `since` or an envelope's id from anyone: 20 digits reach 10^20-1,
    past what Redis accepts, and XRANGE would answer an error)."""
    m = STREAM_ID.fullmatch(raw)
    if m is None:
        return None
    ms, seq = int(m[1]), int(m[2])
    return (ms, seq) if ms <= MAX_PART and seq <= MAX_PART else None


def wires(entries: Any) -> History:
    return [(i, CHAT_PREFIX + i + f[b"s"]) for i, f in entries]


async def read(r: Client, key: str, size: int, since: str | None) -> tuple[History, bool | None]:
    """What Broker.history answers, from the stream `key` that keeps `size` messages."""
    recovered: bool | None = None
    if since is not None:
        recovered = False
        wanted = since.encode()
        if size and parse_id(wanted) is not None:
            # `since` itself plus up to `size` after it, and one more to tell whether
            # more than `size` are missing (then the ring semantics say: not recovered)
            entries: Any = await r.xrange(key, min=wanted, count=size + 2)
            if entries and entries[0][0] == wanted and len(entries) <= size + 1:
                return wires(entries[1:]), True
    if not size:
        return [], recovered
    latest: Any = await r.xrevrange(key, count=size)
    return wires(reversed(latest)), recovered


async def newest_id(r: Client, key: str) -> tuple[int, int]:
    """The id of the newest message in the stream `key`, (0, 0) when there is none."""
    newest: Any = await r.xrevrange(key, count=1)
    return (parse_id(newest[0][0]) or (0, 0)) if newest else (0, 0)

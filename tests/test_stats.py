"""The chat's counters (gochat/chat/stats.py): each one reaches /metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp.test_utils import TestClient

from gochat.chat.stats import ChatStats
from gochat.console.keys import METRICS
from gochat.keys import HUB


async def test_every_chat_counter_is_exported(chat: TestClient[Any, Any]) -> None:
    stats = chat.app[HUB].stats
    expected: dict[str, float] = {}
    for n, f in enumerate(dataclasses.fields(ChatStats)):
        if f.name == "errors":
            stats.errors["too_long"] = 7001
            expected[f.name] = 7001
        else:
            value = 5001 + n * 10  # distinct, and far from anything the app counts itself
            setattr(stats, f.name, value)
            # the first broker start is not a reconnect
            expected[f.name] = value - 1 if f.name == "broker_ups" else value
    text = chat.app[METRICS].render().decode()
    values = {float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    missing = {name: v for name, v in expected.items() if float(v) not in values}
    assert missing == {}, text

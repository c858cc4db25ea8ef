"""The private names of aiohttp and asyncio gochat borrows (gochat/aiohttp_internals.py): one
tripwire per access, and what happens when one is not there any more."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web

from gochat import aiohttp_internals as internals
from gochat.aiohttp_internals import ACCESSES, SHORTCUTS, Access, Unsupported, detect
from gochat.keys import FAST_PATHS, HUB

from .conftest import MakeChat
from .util import connect, join, recv_type


@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: f"{a.shortcut}: {a.name}")
def test_tripwire(access: Access) -> None:
    """Fails when an upgrade of aiohttp, asyncio or uvloop moved a private name a shortcut
    uses. gochat still serves (that shortcut turns itself off at start, and says so), but
    slower: read what changed, mend the shortcut in gochat/aiohttp_internals.py or drop it,
    and record the new release's fingerprint there."""
    access.check()


def test_every_shortcut_is_on_with_the_locked_versions() -> None:
    fast = detect()
    assert dict(fast.off) == {}
    assert fast.describe() == ", ".join(SHORTCUTS)
    assert fast.socket_class is not web.WebSocketResponse
    assert fast.release_parser and fast.forget_exceptions and fast.plain_transports


def _plain() -> Any:
    def f(a: int) -> int:
        return a + 1

    return f


def _commented() -> Any:
    def f(a: int) -> int:
        # a comment, and a blank line

        return a + 1  # and another

    return f


def _changed() -> Any:
    def f(a: int) -> int:
        return a + 2

    return f


def test_a_fingerprint_ignores_comments_and_layout_not_code() -> None:
    fingerprint = internals.fingerprint
    assert len(fingerprint(_plain())) == 16
    assert fingerprint(_plain()) == fingerprint(_commented())
    assert fingerprint(_plain()) != fingerprint(_changed())


def _broken(why: str) -> None:
    raise Unsupported(why)


async def test_a_failed_check_turns_its_shortcut_off_and_says_so_once(
    make_chat: MakeChat, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    moved = Access("inline_reader", "WebSocketResponse._post_start", lambda: _broken("moved"))
    monkeypatch.setattr(internals, "ACCESSES", (moved, *ACCESSES))
    with caplog.at_level(logging.WARNING, logger="gochat.aiohttp_internals"):
        chat = await make_chat()
    fast = chat.app[FAST_PATHS]
    assert dict(fast.off) == {"inline_reader": "WebSocketResponse._post_start: moved"}
    lines = [r.getMessage() for r in caplog.records if "fast path" in r.getMessage()]
    assert lines == [
        "fast path inline_reader off, served through aiohttp's public API: "
        "WebSocketResponse._post_start: moved"
    ]
    assert fast.release_parser and fast.plain_transports  # the others stay on
    ws, _ = await connect(chat, "ann")
    await join(ws, "lobby")
    await ws.send_json({"type": "chat", "room": "lobby", "text": "still served", "cid": "1"})
    assert (await recv_type(ws, "chat"))["text"] == "still served"
    assert chat.app[HUB].stats.inline == 0


async def test_a_check_that_raises_anything_is_a_no(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def trips() -> None:
        raise AttributeError("'RequestHandler' object has no attribute '_parser'")

    monkeypatch.setattr(
        internals, "ACCESSES", (Access("release_http_parser", "slots", trips), *ACCESSES)
    )
    fast = detect()
    assert set(fast.off) == {"release_http_parser"}
    assert "check failed: AttributeError" in fast.off["release_http_parser"]
    assert not fast.release_parser


async def test_fast_paths_off_serves_through_public_api_only(
    make_chat: MakeChat, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gochat.aiohttp_internals"):
        chat = await make_chat(fast_paths=False)
    fast = chat.app[FAST_PATHS]
    assert set(fast.off) == set(SHORTCUTS)
    assert sum("GOCHAT_FAST_PATHS=0" in r.getMessage() for r in caplog.records) == len(SHORTCUTS)
    ws, _ = await connect(chat, "ann")
    await join(ws, "lobby")
    await ws.send_json({"type": "chat", "room": "lobby", "text": "hello", "cid": "1"})
    assert (await recv_type(ws, "chat"))["text"] == "hello"
    hub = chat.app[HUB]
    (client,) = hub.clients.values()
    assert type(client.ws) is web.WebSocketResponse
    assert client.fd == -1  # every write goes through the transport
    assert hub.stats.inline == 0
    assert client.transport is not None
    assert not internals.http_parser_released(client.transport.get_protocol())

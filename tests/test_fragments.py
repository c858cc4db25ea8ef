"""A fragmented message must end in time and within the frame limit (chat/fragments.py):
found from outside (issue 17), where one 64 KB fragment and then only pings held a
connection and its buffer for ever."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from gochat.chat.fragments import FragmentWatch

from .conftest import MakeChat
from .rawws import RawWS

PING, TEXT, CONTINUATION = 0x9, 0x1, 0x0


def stream() -> tuple[bytes, list[tuple[int, bool]]]:
    """Client frames of every header size, a ping between fragments, and where the watch
    must see a fragmented message open (True) or not (False): (end offset, open after)."""
    parts = [
        (RawWS.frame(b"x" * 5), False),  # a whole text frame
        (RawWS.frame(b"a" * 200, TEXT, fin=False), True),  # 16-bit length, begins
        (RawWS.frame(b"p", PING), True),  # a control frame changes nothing
        (RawWS.frame(b"b" * 70_000, CONTINUATION, fin=False), True),  # 64-bit length
        (RawWS.frame(b"c", CONTINUATION), False),  # the last fragment ends it
        (RawWS.frame(b"y"), False),
    ]
    data, marks, end = b"", [], 0
    for frame, is_open in parts:
        data += frame
        end += len(frame)
        marks.append((end, is_open))
    return data, marks


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1000, 100_000])
async def test_the_watch_follows_frames_cut_anywhere(chunk: int) -> None:
    data, marks = stream()
    overdue: list[bool] = []
    watch = FragmentWatch(60, lambda: overdue.append(True))
    seen: list[tuple[int, bool]] = []
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        watch.feed(piece)
        end = start + len(piece)
        seen += [(e, watch.open) for e, _ in marks if e == end]
    ends = {min(start + chunk, len(data)) for start in range(0, len(data), chunk)}
    assert seen == [(end, is_open) for end, is_open in marks if end in ends]
    assert chunk > 1 or len(seen) == len(marks)  # byte by byte: every frame's end checked
    watch.stop()
    assert not overdue and not watch.open


async def test_an_unfinished_fragmented_message_is_closed_1008(make_chat: MakeChat) -> None:
    """One fragment, then only pings: closed 1008 once the bound passes (before: kept for
    ever, the pings answered)."""
    chat = await make_chat(rate=0, fragment_timeout=0.5)
    raw = await asyncio.to_thread(RawWS, "127.0.0.1", chat.port or 0, "/ws?name=holder")
    try:
        assert json.loads((await asyncio.to_thread(raw.read_frame))[1])["type"] == "welcome"
        started = time.monotonic()
        await asyncio.to_thread(raw.send_frame, b'{"type":"chat","room":', TEXT, False)

        def ping_until_closed() -> int:
            while True:
                raw.send_frame(b"still here", PING)
                opcode, payload = raw.read_frame()
                if opcode == 0x8:
                    return int.from_bytes(payload[:2], "big")

        code = await asyncio.wait_for(asyncio.to_thread(ping_until_closed), 5)
        assert code == 1008
        assert 0.5 <= time.monotonic() - started < 3
    finally:
        raw.close()


async def test_a_fragmented_message_that_ends_in_time_is_read(make_chat: MakeChat) -> None:
    chat = await make_chat(rate=0)
    raw = await asyncio.to_thread(RawWS, "127.0.0.1", chat.port or 0, "/ws?name=patient")
    try:
        await asyncio.to_thread(raw.read_frame)  # welcome
        await asyncio.to_thread(raw.send_frame, b'{"type":"join","room":"lobby"}')
        frames = [(b'{"type":"chat",', TEXT, False), (b"p", PING, True)]
        frames += [
            (b'"room":"lobby",', CONTINUATION, False),
            (b'"text":"whole"}', CONTINUATION, True),
        ]
        for payload, opcode, fin in frames:
            await asyncio.to_thread(raw.send_frame, payload, opcode, fin)

        def until_chat() -> dict[str, str]:
            while True:
                opcode, payload = raw.read_frame()
                if opcode == TEXT and json.loads(payload)["type"] == "chat":
                    return dict(json.loads(payload))

        assert (await asyncio.wait_for(asyncio.to_thread(until_chat), 5))["text"] == "whole"
    finally:
        raw.close()


async def test_fragments_count_toward_the_frame_limit_as_they_arrive(make_chat: MakeChat) -> None:
    """Over GOCHAT_MAX_FRAME in fragments: 1009 before the message is ever finished."""
    chat = await make_chat(rate=0, max_frame=1024)
    raw = await asyncio.to_thread(RawWS, "127.0.0.1", chat.port or 0, "/ws?name=hoarder")
    try:
        await asyncio.to_thread(raw.read_frame)  # welcome
        await asyncio.to_thread(raw.send_frame, b"a" * 600, TEXT, False)
        await asyncio.to_thread(raw.send_frame, b"b" * 600, CONTINUATION, False)
        code, _ = await asyncio.wait_for(asyncio.to_thread(raw.read_until_close), 5)
        assert code == 1009
    finally:
        raw.close()

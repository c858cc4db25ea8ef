"""The Outbox's direct writes (gochat/chat/outbox.py): when a transport holds no bytes, flush
writes a client's frames to its socket itself. These tests pin what that must never change:
bytes keep their order, a partial write leaves the rest to the transport, an error reaches
the transport, and only plain socket transports are written to directly. Each runs on the
loop the tests use (asyncio's selector loop) and on uvloop, which production runs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from gochat.aiohttp_internals import detect
from gochat.chat.client import Client
from gochat.chat.outbox import Outbox, text_frame

LOOPS = ["asyncio", "uvloop"]


OPEN: list[tuple[asyncio.Transport, socket.socket]] = []


def run_on(kind: str, main: Callable[[], Awaitable[None]]) -> None:
    """Run `main` on a new loop of `kind`; close what it opened even when it fails."""
    loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        while OPEN:
            transport, peer = OPEN.pop()
            transport.abort()
            peer.close()
        loop.run_until_complete(asyncio.sleep(0))  # let the transports finish closing
        loop.close()


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def connected(sndbuf: int = 0) -> tuple[asyncio.Transport, Sink, socket.socket]:
    """A server-side transport over a real socket, and the peer's blocking socket."""
    ours, peer = socket.socketpair()
    if sndbuf:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    ours.setblocking(False)
    sink = Sink()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: sink, ours)
    OPEN.append((transport, peer))
    return transport, sink, peer


def client_on(transport: asyncio.Transport) -> Client:
    return Client("c1", "u1", "ann", "127.0.0.1", None, transport, fd=detect().direct_fd(transport))


async def read_exactly(peer: socket.socket, n: int) -> bytes:
    def read() -> bytes:
        peer.settimeout(5)
        got = b""
        while len(got) < n:
            try:
                chunk = peer.recv(n - len(got))
            except TimeoutError:
                break  # what came so far: the assertion shows what is missing
            if not chunk:
                break
            got += chunk
        return got

    return await asyncio.to_thread(read)


def drain(peer: socket.socket) -> bytes:
    """What the peer's socket has now, without waiting."""
    got = b""
    peer.setblocking(False)
    try:
        while chunk := peer.recv(65536):
            got += chunk
    except BlockingIOError:
        pass
    peer.setblocking(True)
    return got


def no_overflow(client: Client) -> None:
    raise AssertionError(f"{client} closed as a slow consumer")


@pytest.mark.parametrize("kind", LOOPS)
def test_direct_fd_only_for_plain_socket_transports(kind: str) -> None:
    async def main() -> None:
        transport, _, peer = await connected()
        sock = transport.get_extra_info("socket")
        direct_fd = detect().direct_fd
        assert direct_fd(transport) == sock.fileno() >= 0
        assert client_on(transport).fd == sock.fileno()
        assert direct_fd(None) == -1
        assert direct_fd(asyncio.Transport()) == -1  # e.g. TLS: the socket carries records
        assert detect(enabled=False).direct_fd(transport) == -1

    run_on(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_frame_never_overtakes_bytes_the_transport_holds(kind: str) -> None:
    async def main() -> None:
        transport, _, peer = await connected(sndbuf=4096)
        client = client_on(transport)
        box = Outbox(1 << 24, no_overflow)
        earlier = b"e" * 200_000
        transport.write(earlier)  # the peer reads nothing yet: most of it stays buffered
        held = transport.get_write_buffer_size()
        assert held > 0
        # The peer reads all the kernel has, so the socket has room again, but the loop has
        # not yet run the transport's write-ready callback: a write of our own would now go
        # ahead of the bytes the transport holds.
        head = drain(peer)
        assert 0 < len(head) < len(earlier) and head == earlier[: len(head)]
        frame = text_frame(b'{"type":"chat","text":"after"}')
        box.push(client, frame)
        box.flush()
        assert transport.get_write_buffer_size() == held + len(frame)
        rest = earlier[len(head) :] + frame
        assert await read_exactly(peer, len(rest)) == rest
        assert (box.writes, box.frames, client.msgs_out) == (1, 1, 1)

    run_on(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_partial_direct_write_leaves_the_rest_to_the_transport(kind: str) -> None:
    async def main() -> None:
        transport, _, peer = await connected(sndbuf=4096)
        client = client_on(transport)
        box = Outbox(1 << 24, no_overflow)
        frames = [text_frame(bytes([65 + i % 26]) * 60_000) for i in range(5)]
        for frame in frames:  # one tick: one write of all five, far more than the kernel takes
            box.push(client, frame)
        assert transport.get_write_buffer_size() == 0
        box.flush()
        unsent = transport.get_write_buffer_size()
        assert 0 < unsent < sum(map(len, frames))  # the kernel took a part; the rest waits
        assert box.backlogged() == 0  # no write timeout configured: nothing to time
        expected = b"".join(frames)
        assert await read_exactly(peer, len(expected)) == expected
        assert (box.writes, box.frames, client.msgs_out) == (1, 5, 5)

    run_on(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_failed_direct_write_reaches_the_transport(kind: str) -> None:
    async def main() -> None:
        transport, sink, peer = await connected()
        client = client_on(transport)
        box = Outbox(1 << 24, no_overflow)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        peer.close()  # a reset: the next write fails
        errors: list[Any] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        box.push(client, text_frame(b'{"type":"chat"}'))
        box.flush()  # must not raise: the transport meets the error and closes
        exc = await sink.lost
        assert transport.is_closing()
        assert isinstance(exc, OSError), exc
        assert errors == []

    run_on(kind, main)


# The first fan-out of a quiet tick is written before push_all returns (Outbox._write_now);
# a second one in the same tick, and every one in the tick after a busy tick, waits for the
# flush, so under load each client still gets one write per tick.


async def next_tick() -> None:
    """Return once the callbacks scheduled so far (the Outbox's flush) have run."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


def chat(n: int) -> bytes:
    return text_frame(b'{"type":"chat","text":"m%d"}' % n)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_quiet_ticks_fanout_is_written_at_once_and_a_busy_ticks_coalesced(kind: str) -> None:
    async def main() -> None:
        pairs = [await connected() for _ in range(3)]
        clients = [client_on(transport) for transport, _, _ in pairs]
        peers = [peer for _, _, peer in pairs]
        box = Outbox(1 << 24, no_overflow)

        box.push_all(clients, chat(1))  # quiet: every member has it now
        assert [drain(p) for p in peers] == [chat(1)] * 3
        box.push_all(clients, chat(2))  # same tick: queued for its flush
        box.push_all(clients, chat(3))
        assert [drain(p) for p in peers] == [b""] * 3
        await next_tick()
        assert [drain(p) for p in peers] == [chat(2) + chat(3)] * 3
        assert (box.writes, box.frames) == (6, 9)

        box.push_all(clients, chat(4))  # the tick after a busy one: queued
        assert [drain(p) for p in peers] == [b""] * 3
        await next_tick()
        assert [drain(p) for p in peers] == [chat(4)] * 3

        box.push_all(clients, chat(5))  # that tick had one fan-out: quiet again
        assert [drain(p) for p in peers] == [chat(5)] * 3
        assert (box.writes, box.frames) == (12, 15)
        assert [c.msgs_out for c in clients] == [5] * 3

    run_on(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_an_immediate_write_never_overtakes_a_queued_or_buffered_frame(kind: str) -> None:
    async def main() -> None:
        (t1, _, p1), (t2, _, p2), (t3, _, p3) = [await connected(sndbuf=4096) for _ in range(3)]
        queued, buffered, idle = client_on(t1), client_on(t2), client_on(t3)
        box = Outbox(1 << 24, no_overflow)
        box.push(queued, chat(0))  # e.g. a `joined` earlier in the tick
        earlier = b"e" * 200_000
        t2.write(earlier)
        head = drain(p2)  # the kernel has room again; the transport still holds the rest
        assert t2.get_write_buffer_size() > 0

        box.push_all([queued, buffered, idle], chat(1))
        assert drain(p3) == chat(1)  # the idle one at once
        assert drain(p1) == b""  # behind its queued frame
        assert (box.writes, box.frames, idle.msgs_out) == (1, 1, 1)  # the other two: queued
        await next_tick()
        assert (box.writes, box.frames) == (3, 4)  # queued: chat(0) and chat(1) in one write
        assert await read_exactly(p1, 2 * len(chat(0))) == chat(0) + chat(1)
        rest = earlier[len(head) :] + chat(1)
        assert await read_exactly(p2, len(rest)) == rest

    run_on(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_an_immediate_partial_or_failed_write_goes_to_the_transport(kind: str) -> None:
    async def main() -> None:
        (big_t, _, big_p), (gone_t, gone_sink, gone_p) = [
            await connected(sndbuf=4096),
            await connected(),
        ]
        gone_p.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        gone_p.close()  # a reset: the next write fails
        errors: list[Any] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        frame = text_frame(b"x" * 300_000)
        box = Outbox(1 << 24, no_overflow)
        box.push_all([client_on(big_t), client_on(gone_t)], frame)  # must not raise
        assert 0 < big_t.get_write_buffer_size() < len(frame)  # the kernel took a part
        assert await read_exactly(big_p, len(frame)) == frame
        assert isinstance(await gone_sink.lost, OSError)
        assert errors == []

    run_on(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_an_immediate_write_over_the_limit_closes_that_member_only(kind: str) -> None:
    async def main() -> None:
        (slow_t, _, _), (fast_t, _, fast_p) = [await connected(sndbuf=4096), await connected()]
        slow, fast = client_on(slow_t), client_on(fast_t)
        overflowed: list[Client] = []
        box = Outbox(100_000, overflowed.append)
        frame = text_frame(b"y" * 150_000)  # the slow peer reads nothing: most stays unsent
        box.push_all({"s": slow, "f": fast}.values(), frame)
        assert overflowed == [slow]
        assert await read_exactly(fast_p, len(frame)) == frame

    run_on(kind, main)

"""The benchmark's short S1 in the suite: a fan-out loses, duplicates and reorders nothing.

Correctness only (never timing): 100 clients, 300 messages at 200 msg/s, 30,000 deliveries
checked by sequence number on every client (bench/loadgen.py).
"""

from __future__ import annotations

from typing import Literal

import pytest

from bench import loadgen, report
from bench.run import pair_order, run_check
from gochat import protocol
from gochat.brokers.base import CHAT_PREFIX
from gochat.chat.outbox import text_frame
from gochat.protocol import encode


@pytest.mark.slow
def test_fanout_loses_nothing() -> None:
    result = run_check(clients=100, messages=300, rate=200.0)
    assert result["ok"], result
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["reordered"] == 0


def test_repeated_runs_are_reported_as_medians() -> None:
    """`bench/run.py --repeat N`: each figure is the median of its runs, ratios pair by pair."""
    runs = [
        {"kind": "result", "scenario": "S2", "server": "gochat", "rate": 1000.0, "round": n}
        | {"us_per_delivery": us, "lost": 0, "noisy": noisy, "latency_ms": {"p99": p99}}
        for n, (us, p99, noisy) in enumerate(
            [(20.0, 5.0, False), (30.0, 9.0, True), (22.0, 6.0, False)]
        )
    ]
    ratios = [
        {"kind": "ratio", "scenario": "S2", "a": "S2 gochat", "b": "S2 naive", "rate": 1000.0}
        | {"us_per_delivery": r}
        for r in (0.6, 0.9, 0.65)
    ]
    result, ratio = report.medians([{"kind": "machine"}, *runs, *ratios])
    assert result["us_per_delivery"] == 22.0 and result["latency_ms"] == {"p99": 6.0}
    assert result["runs"] == 3 and result["us_per_delivery_range"] == [20.0, 30.0]
    assert result["noisy"] is False and result["noisy_runs"] == 1 and result["lost"] == 0
    assert "noisy machine in 1 of 3 runs" in report._flags(result)
    one_saturated = [r | {"loadgen_saturated": n == 1} for n, r in enumerate(runs)]
    flags = report._flags(report.medians(one_saturated)[0])
    assert "loadgen saturated in 1 of 3 runs" in flags  # not hidden by the median
    assert "round" not in result
    assert ratio["us_per_delivery"] == 0.65 and ratio["runs"] == 3
    assert "median of" in report.render([*runs, *ratios])
    other = [r | {"b": "S1 naive", "us_per_delivery": 5.0} for r in ratios]
    assert len(report.medians([*ratios, *other])) == 2  # a / b and a / other b: not mixed


def test_repeated_rounds_alternate_which_server_runs_first() -> None:
    both = ["gochat", "naive"]
    assert [pair_order(both, n) for n in (1, 2, 3, 4)] == [both, both[::-1], both, both[::-1]]
    assert pair_order(["naive", "gochat"], 2) == ["naive", "gochat"]
    assert pair_order(["gochat"], 2) == ["gochat"]


async def test_the_load_generator_counts_presence_and_joined_from_their_bytes() -> None:
    """S5's frames are counted without decoding them, and to the same figures: online
    presence only, members of a `joined` but not its history; a frame that only starts
    like one is decoded, and reported if it is not JSON."""
    run = loadgen.Run()
    client = loadgen.Client(run, 0, loadgen.Target.parse("ws://127.0.0.1:1/ws"), probe=True)
    client.joined = run.loop.create_future()
    tricky = 'Bob "status":"online" {"userId":'  # escaped in JSON: no false match
    history = [CHAT_PREFIX + b'1-0",' + encode({"userId": "a", "text": tricky})[1:]]
    frames = [
        protocol.presence("a", tricky, "storm", "online"),
        protocol.presence("b", tricky, "storm", "offline"),
        protocol.joined(
            "storm", [{"userId": "a", "name": tricky}, {"userId": "b", "name": "B"}], history, None
        ),
        b'{"type":"presence","status":"online"',  # truncated: not counted, reported
    ]
    for frame in frames:
        client._on_text(frame, 0)
    assert (client.presence, run.presence) == (1, 1)
    assert client.joined_members == 2 and client.joined.done()
    assert run.errors == {"bad_json_from_server": 1}

    counting = loadgen.Client(run, 1, loadgen.Target.parse("ws://127.0.0.1:1/ws"), probe=False)
    counting._handshake = None  # as after the upgrade
    flood: list[tuple[str, str, Literal["online", "offline"]]] = [
        ("a", "A", "online"),
        ("b", "online", "offline"),  # a user named "online"
    ]
    counting.data_received(
        b"".join(text_frame(protocol.presence(u, n, "storm", st)) for u, n, st in flood)
    )
    assert counting.presence == 1


def test_a_chunk_cut_mid_frame_is_counted_without_a_walk() -> None:
    """A full read buffer ends inside a frame; the whole frames before it are still checked
    with strided slices, and the rest waits for the next read."""

    def served(room: str, seq: int) -> bytes:  # as the server frames it: unmasked
        text = loadgen.chat_text(seq, 0, 10**18)
        return text_frame(f'{{"type":"chat","room":"{room}","text":"{text}"}}'.encode())

    frames = [served("r", seq) for seq in range(5)]
    size = len(frames[0])
    assert {len(f) for f in frames} == {size}
    data = b"".join(frames)
    assert loadgen._uniform(data) == (5, 5 * size)
    assert loadgen._uniform(data[: 3 * size + 7]) == (3, 3 * size)
    assert loadgen._uniform(data[: size - 1]) == (0, 0)  # not one whole frame: the walk
    longer = served("room", 5)
    assert loadgen._uniform(data + longer) == (0, 0)  # lengths differ: the walk
    shorter = served("", 5)  # whole, and shorter than the rest: it must not wait
    assert len(data + shorter) // size == 5
    assert loadgen._uniform(data + shorter) == (0, 0)
    assert loadgen._uniform(data + shorter[:-1]) == (5, 5 * size)  # incomplete: it may


async def test_a_counting_client_finds_gaps_duplicates_and_reorders() -> None:
    """The counting fast path takes a chunk whose sequence numbers are exactly the next
    ones; any other chunk is counted number by number, so nothing wrong passes unseen."""
    run = loadgen.Run()
    client = loadgen.Client(run, 0, loadgen.Target.parse("ws://127.0.0.1:1/ws"), probe=False)
    client._handshake = None  # as after the upgrade
    client.expect({0: 11})

    def chunk(*seqs: int) -> bytes:
        texts = (loadgen.chat_text(seq, 0, 10**18) for seq in seqs)
        return b"".join(
            text_frame(f'{{"type":"chat","room":"r","text":"{t}"}}'.encode()) for t in texts
        )

    client.data_received(chunk(0, 1, 2, 3))  # in order
    client.data_received(chunk(4, 6, 7))  # 5 skipped
    client.data_received(chunk(7, 5))  # a duplicate, then 5 late
    client.data_received(chunk(8, 9, 10, 11)[:-5])  # cut mid-frame: 11 waits
    stream = client.streams[0]
    assert (stream.next, stream.count, stream.dups, stream.reorders) == (11, 11, 1, 1)
    assert not stream.missing and not stream.complete
    client.data_received(chunk(8, 9, 10, 11)[-5:])
    assert stream.complete and stream.count == 12 and client.chats == 13

    other = loadgen.Client(run, 1, loadgen.Target.parse("ws://127.0.0.1:1/ws"), probe=False)
    other._handshake = None
    other.expect({0: 11})
    other.data_received(chunk(0, 1, 3, 2))  # right first and length, wrong order inside
    stream = other.streams[0]
    assert (stream.next, stream.count, stream.reorders, stream.missing) == (4, 4, 1, set())

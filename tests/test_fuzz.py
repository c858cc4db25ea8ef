"""Hostile input, property-tested: the decoder and a live connection never fail open.

Every input yields a contract error or a valid effect: never an exception, a 1011, or a
broadcast of invalid data (NaN/Infinity, lone surrogates, NUL, malformed JSON).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gochat import protocol
from gochat.protocol import ErrorCode, ProtocolError, decode

from .conftest import MakeChat
from .util import connect, join, recv

CODES = {c.value for c in ErrorCode}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["chat", "join", "leave", "zap"])},
    optional={
        "room": st.one_of(st.sampled_from(["lobby", "r-1", "", "a b"]), json_values),
        "text": st.one_of(st.text(max_size=50), json_values),
        "cid": st.one_of(st.text(max_size=70), json_values),
        "since": st.one_of(st.text(max_size=20), json_values),
        "extra": json_values,
    },
)
raw_frames = st.one_of(
    st.text(max_size=200),
    messages.map(lambda m: json.dumps(m, allow_nan=True)),
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    st.sampled_from(
        [
            '{"type":"chat","room":"lobby","text":"\\ud800"}',
            '{"type":"chat","room":"lobby","text":"a\\u0000b"}',
            '{"type":"chat","room":"lobby","text":Infinity}',
            '{"type":"join","room":"lobby","room":"x"}',
            "[" * 5000 + "]" * 5000,
            '{"type":"chat","room":"lobby","text":"\\u202egnp.exe"}',
            '{"type":"chat","room":"lobby","text":"\\u001b[2Jcleared","cid":"\\u2066"}',
            '{"type":"chat","room":"lobby","text":"two\\r\\nlines\\u0085"}',
            '{"type":"chat","room":"lobby","text":"\\u05e9\\u05dc\\u05d5\\u05dd\\u200f ok"}',
        ]
    ),
)


# control characters but tab and newline, and the bidi embeddings, overrides and isolates
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _valid_output(value: Any) -> None:
    """What the server re-sends must be strict JSON, valid UTF-8, and free of NUL, control
    characters (terminal escapes) and bidi overrides."""
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, str):
        value.encode("utf-8")
        assert UNSAFE.search(value) is None, ascii(value)
    elif isinstance(value, dict):
        for v in value.values():
            _valid_output(v)
    elif isinstance(value, list):
        for v in value:
            _valid_output(v)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_frames)
def test_decoder_refuses_with_contract_codes_only(raw: str) -> None:
    try:
        msg = decode(raw)
    except ProtocolError as err:
        assert err.code.value in CODES
        return
    _valid_output(msg._asdict())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_frames)
def test_fast_path_accepts_only_what_the_schema_accepts(raw: str) -> None:
    """decode() takes a shortcut for well-formed flat frames; whatever it accepts that way,
    the full pydantic path must accept too, with the same values."""
    try:
        obj = json.loads(raw, parse_constant=lambda c: 1 / 0)
    except (ValueError, RecursionError, ZeroDivisionError):
        return
    if not isinstance(obj, dict) or obj.get("type") not in protocol.KNOWN_TYPES:
        return
    fast = protocol._fast(obj["type"], obj)
    if fast is None:
        return
    assert protocol._full(obj, obj["type"]) == fast
    assert type(protocol._full(obj, obj["type"])) is type(fast)


# compact and spaced separators, repeated keys, nulls and nesting: what `_plain` must sort
flat_pairs = st.lists(
    st.tuples(
        st.sampled_from(["type", "room", "text", "cid", "since", "x"]),
        st.one_of(st.none(), st.text(max_size=12), st.integers(), st.lists(st.none(), max_size=1)),
    ),
    max_size=6,
)


def _object_text(pairs: list[tuple[str, Any]], spaced: bool) -> str:
    sep, colon = (", ", ": ") if spaced else (",", ":")
    body = sep.join(f"{json.dumps(k)}{colon}{json.dumps(v)}" for k, v in pairs)
    return "{" + body + "}"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(raw_frames, st.builds(_object_text, flat_pairs, st.booleans())))
def test_orjson_shortcut_agrees_with_the_strict_decoder(raw: str) -> None:
    """`_plain` (orjson) may only return what the strict decoder returns for the same text,
    and must leave to it every frame the strict decoder refuses (repeated keys included)."""
    plain = protocol._plain(raw)
    if plain is None:
        return
    assert plain == protocol._DECODER.decode(raw)
    assert list(plain) == list(protocol._DECODER.decode(raw))
    kind = plain.get("type")
    if kind in protocol.KNOWN_TYPES:  # decode() then skips _fast's own flatness check
        assert protocol._fast(kind, plain, flat=True) == protocol._fast(kind, plain)


def test_orjson_shortcut_takes_the_common_frames() -> None:
    assert protocol._plain('{"type":"chat","room":"r","text":"hi","cid":null}') == {
        "type": "chat",
        "room": "r",
        "text": "hi",
        "cid": None,
    }
    assert protocol._plain('{"type": "join", "room": "r"}') == {"type": "join", "room": "r"}
    for refused in (
        '{"type":"chat","room":"r","text":"a","text":null}',  # a repeated key
        '{"type":"chat","room":"r","room":"r"}',
        '{"type":"chat","room":"r","text":"say \\"hi\\""}',  # a backslash: strict path
        '{"type":"chat","room":"r","text":5}',
        '{"type":"chat","room":{"a":"b"}}',
        '["type","chat"]',
        '{"type":"chat","room":"r","text":NaN}',
    ):
        assert protocol._plain(refused) is None, refused


def test_fast_path_takes_the_common_frames() -> None:
    """The shortcut must actually be taken, or it is dead weight."""
    assert protocol._fast("chat", {"type": "chat", "room": "r", "text": "hi", "cid": "1"})
    assert protocol._fast("join", {"type": "join", "room": "r", "since": None, "x": "y"})
    assert protocol._fast("leave", {"type": "leave", "room": "r"}) == protocol.Leave("r")
    for refused in (
        {"type": "chat", "room": "r"},
        {"type": "chat", "room": "r", "text": 5},
        {"type": "chat", "room": "r", "text": "x", "cid": "c" * 65},
        {"type": "join", "room": "r", "since": "\u202e"},
        {"type": "leave", "room": "r", "x": [1]},
    ):
        assert protocol._fast(str(refused["type"]), refused) is None, refused


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(frames=st.lists(raw_frames, min_size=1, max_size=6))
async def test_live_connection_survives_anything(make_chat: MakeChat, frames: list[str]) -> None:
    chat = await make_chat()
    try:
        attacker, _ = await connect(chat, "attacker")
        witness, _ = await connect(chat, "witness")
        await join(attacker, "lobby")
        await join(witness, "lobby")
        for raw in frames:
            await attacker.send_str(raw)
        # a marker after the burst (re-joining, in case the burst left): all before it is done
        await attacker.send_json({"type": "join", "room": "lobby"})
        await attacker.send_json({"type": "chat", "room": "lobby", "text": "marker"})
        while True:
            frame = await recv(attacker)
            _valid_output(frame)
            if frame["type"] == "error":
                assert frame["code"] in CODES
            if frame["type"] == "chat" and frame["text"] == "marker":
                break
        while True:  # the witness sees only valid frames, then the marker
            frame = await recv(witness)
            _valid_output(frame)
            if frame["type"] == "chat" and frame["text"] == "marker":
                break
        assert not attacker.closed and attacker.close_code is None
    finally:
        await chat.close()


async def test_live_binary_garbage_closes_1003_only(make_chat: MakeChat) -> None:
    chat = await make_chat()
    ws, _ = await connect(chat, "bin")
    await ws.send_bytes(bytes(range(256)))
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1003

"""The wire contract: client messages, server messages, error codes and close codes.

Inbound frames are parsed strictly (no NaN/Infinity, no duplicate keys, no deep nesting, no
lone surrogates). The common well-formed frame (flat string fields) is checked in plain
Python; anything else is validated by one pydantic TypeAdapter built at import, which also
words every refusal. Outbound messages are plain dicts serialised once by `encode`; the same
bytes go to every recipient.
"""

from __future__ import annotations

import json
import re
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal, NamedTuple, NoReturn, TypedDict

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

ROOM_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_DEPTH = 4  # our messages are flat objects; anything deeper is refused


class ErrorCode(StrEnum):
    """The closed vocabulary of `error` frame codes."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    BAD_ROOM = "bad_room"
    NOT_IN_ROOM = "not_in_room"
    TOO_LONG = "too_long"
    TOO_MANY_ROOMS = "too_many_rooms"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    UNAUTHORIZED = "unauthorized"


class CloseCode(IntEnum):
    """WebSocket close codes the server uses."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    UNSUPPORTED = 1003  # binary frame
    POLICY = 1008  # sustained rate abuse, bad or expired token
    TOO_BIG = 1009  # frame over GOCHAT_MAX_FRAME
    INTERNAL = 1011  # unexpected server error
    TRY_AGAIN = 1013  # slow consumer
    ABNORMAL = 1006  # never sent: what a connection dropped without a close handshake reports
    KICKED = 4001  # kicked from the operations console


class ProtocolError(Exception):
    """A request refused with an `error` frame; the connection stays open."""

    def __init__(self, code: ErrorCode, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref

    @classmethod
    def unavailable(cls, cause: BaseException | None, ref: str | None) -> ProtocolError:
        """The broker could not take the request (`cause` says why, if it says anything)."""
        return cls(ErrorCode.UNAVAILABLE, str(cause or "") or "broker down", ref)


# --- client -> server -------------------------------------------------------------------


class Join(NamedTuple):
    room: str
    since: str | None = None


class Leave(NamedTuple):
    room: str


class Chat(NamedTuple):
    room: str
    text: str
    cid: str | None = None


MAX_ID = 64  # longest `cid` and `since`


# The schema of the full path. Its models are only the validator: decode returns the
# NamedTuples above, which the fast path builds for a fraction of a model's cost.
class _Inbound(BaseModel):
    # strict: a number is not a room name; extra fields are ignored per the contract
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class _JoinIn(_Inbound):
    type: Literal["join"]
    room: str
    since: Annotated[str, Field(max_length=MAX_ID)] | None = None


class _LeaveIn(_Inbound):
    type: Literal["leave"]
    room: str


class _ChatIn(_Inbound):
    type: Literal["chat"]
    room: str
    text: str
    cid: Annotated[str, Field(max_length=MAX_ID)] | None = None


ClientMessage = Annotated[_JoinIn | _LeaveIn | _ChatIn, Field(discriminator="type")]
CLIENT_MESSAGE: TypeAdapter[_JoinIn | _LeaveIn | _ChatIn] = TypeAdapter(ClientMessage)
KNOWN_TYPES = frozenset({"join", "leave", "chat"})


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _depth(value: Any, limit: int) -> bool:
    """True when `value` nests no deeper than `limit` containers."""
    if isinstance(value, dict):
        return limit > 0 and all(_depth(v, limit - 1) for v in value.values())
    if isinstance(value, list):
        return limit > 0 and all(_depth(v, limit - 1) for v in value)
    return True


# Never stored or re-sent: NUL and the other C0 controls but tab and newline, DEL, the C1
# controls (terminal escapes in someone's log viewer or CLI client), and the bidi
# embeddings, overrides and isolates (text that displays in another order than it reads,
# "Trojan Source"). Marks that RTL text and emoji need (LRM, RLM, ZWJ, ZWNJ) stay.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


# The strict decoder, for every frame `_plain` does not vouch for; one for the process:
# json.loads with options builds a new one on every call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant)


def has_bad_chars(text: str) -> bool:
    """Lone surrogates (not UTF-8), NUL, control characters or bidi overrides."""
    if _UNSAFE.search(text) is not None:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _fast(kind: str, obj: dict[str, Any], flat: bool = False) -> Join | Leave | Chat | None:
    """The common, well-formed frame, accepted without pydantic (about 6x cheaper).

    Only flat objects whose every value is a string (or null) get here, so the depth check
    cannot fail; `flat=True` says the caller has checked that already (`_plain` does). It
    accepts exactly what the full path would accept and builds the same values; on anything
    it does not accept (a missing or mistyped field, an over-long id, a bad character) it
    returns None, and the full path finds the fault and words it.
    """
    if not flat:
        for value in obj.values():
            if type(value) is not str and value is not None:
                return None
    room = obj.get("room")
    if room is None or has_bad_chars(room):
        return None
    if kind == "chat":
        text, cid = obj.get("text"), obj.get("cid")
        if text is None or has_bad_chars(text):
            return None
        if cid is not None and (len(cid) > MAX_ID or has_bad_chars(cid)):
            return None
        return Chat(room, text, cid)
    if kind == "join":
        since = obj.get("since")
        if since is not None and (len(since) > MAX_ID or has_bad_chars(since)):
            return None
        return Join(room, since)
    return Leave(room)


def _plain(raw: str) -> dict[str, Any] | None:
    """The common frame parsed by orjson (4x faster): a flat object of strings and nulls,
    with no backslash and no repeated key. None for anything else, which the strict decoder
    then parses (and words the fault of).

    orjson keeps the last of repeated keys where the strict decoder refuses them. Without a
    backslash every `"` delimits a string, and in a flat object every string is a key or a
    value, so a repeated key shows as more quotes than the parsed object accounts for.
    """
    if "\\" in raw:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    strings = len(obj)
    for value in obj.values():
        if type(value) is str:
            strings += 1
        elif value is not None:
            return None
    return obj if raw.count('"') == 2 * strings else None


def decode(raw: str) -> Join | Leave | Chat:
    """Parse one text frame strictly and validate it; raise ProtocolError on any fault."""
    obj = _plain(raw)
    flat = obj is not None  # _plain returns only flat objects of strings and nulls
    if obj is None:
        try:
            obj = _DECODER.decode(raw)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {_short(exc)}") from None
    if type(obj) is not dict:
        raise ProtocolError(ErrorCode.BAD_JSON, "a frame must be one JSON object")
    kind = obj.get("type")
    ref = kind if isinstance(kind, str) and kind in KNOWN_TYPES else None
    if ref is not None:
        fast = _fast(ref, obj, flat)
        if fast is not None:
            return fast
    return _full(obj, ref)


def _full(obj: dict[str, Any], ref: str | None) -> Join | Leave | Chat:
    """Validate any decoded object against the schema; raise ProtocolError on any fault."""
    if not _depth(obj, MAX_DEPTH):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "nesting too deep", ref)
    if ref is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "type must be one of chat, join, leave")
    try:
        valid = CLIENT_MESSAGE.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, _describe(exc), _cid_of(obj) or ref) from None
    msg: Join | Leave | Chat
    if isinstance(valid, _ChatIn):
        msg = Chat(valid.room, valid.text, valid.cid)
    elif isinstance(valid, _JoinIn):
        msg = Join(valid.room, valid.since)
    else:
        msg = Leave(valid.room)
    for name, value in zip(msg._fields, msg, strict=True):
        if value is not None and has_bad_chars(value):
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, f"{name}: invalid characters", _cid_of(obj) or ref
            )
    return msg


def _cid_of(obj: dict[str, Any]) -> str | None:
    return usable_cid(obj.get("cid"))


def usable_cid(cid: object) -> str | None:
    """`cid` when an `error` may carry it back as its `ref`, else None."""
    return cid if isinstance(cid, str) and len(cid) <= MAX_ID and not has_bad_chars(cid) else None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in err["loc"][1:]) or "message"
        if err["type"] == "missing":
            parts.append(f"{where}: required")
        else:
            parts.append(f"{where}: {err['msg'].lower()}")
    return "; ".join(parts)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:80]


def check_room(room: str, ref: str | None = None) -> None:
    """Raise bad_room unless `room` is an allowed room name."""
    if not ROOM_RE.fullmatch(room):
        raise ProtocolError(ErrorCode.BAD_ROOM, "room names are 1-64 of A-Z a-z 0-9 _ . -", ref)


def check_text(text: str, max_text: int, ref: str | None = None) -> str:
    """A chat text that did not come in a client's frame (whose decoding checks its
    characters), checked as a client's is: no bad characters, trimmed, not empty, at most
    `max_text` characters. Returns it trimmed; raises bad_message or too_long."""
    if has_bad_chars(text):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "text: invalid characters", ref)
    text = text.strip()
    if not text:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "text: empty", ref)
    if len(text) > max_text:
        raise ProtocolError(ErrorCode.TOO_LONG, f"text over {max_text} characters", ref)
    return text


# --- server -> client -------------------------------------------------------------------


class Member(TypedDict):
    userId: str
    name: str


class ChatOut(TypedDict, total=False):
    type: Literal["chat"]
    id: str
    room: str
    userId: str
    name: str
    text: str
    ts: int
    cid: str


def encode(message: dict[str, Any] | Any) -> bytes:
    """Serialise one outbound message: compact UTF-8 JSON (orjson: 10x the stdlib's speed;
    the protocol has no floats, so its NaN-as-null never applies)."""
    return orjson.dumps(message)


def welcome(user_id: str, name: str, node: str) -> bytes:
    return encode({"type": "welcome", "userId": user_id, "name": name, "node": node})


def left(room: str) -> bytes:
    return encode({"type": "left", "room": room})


def error(code: ErrorCode, message: str, ref: str | None = None) -> bytes:
    body: dict[str, Any] = {"type": "error", "code": code.value, "message": message}
    if ref is not None:
        body["ref"] = ref
    return encode(body)


def presence(user_id: str, name: str, room: str, status: Literal["online", "offline"]) -> bytes:
    return encode(
        {"type": "presence", "userId": user_id, "name": name, "room": room, "status": status}
    )


def joined(room: str, members: list[Member], history: list[bytes], recovered: bool | None) -> bytes:
    """The `joined` reply; `history` items are already-encoded chat messages, spliced in."""
    head = encode({"type": "joined", "room": room, "members": members})[:-1]
    tail = (
        b"" if recovered is None else (b',"recovered":true' if recovered else b',"recovered":false')
    )
    return head + b',"history":[' + b",".join(history) + b"]" + tail + b"}"

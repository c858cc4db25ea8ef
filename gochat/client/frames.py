"""What the server sends, as typed values; and what the library itself reports.

Every server frame becomes one of the frozen dataclasses below. Fields the library does not
know are ignored (the contract lets every server message grow); a frame of a type it does
not know, or a known type missing a field it needs, becomes `Unknown`, carrying the decoded
object, so a newer server never breaks an older client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Member:
    """One user in a room's member list."""

    user_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Welcome:
    """The first frame of every connection: who the server says we are, and which node."""

    user_id: str
    name: str
    node: str


@dataclass(frozen=True, slots=True)
class Chat:
    """A chat message: `id` is opaque, increasing within its room; `ts` is ms since epoch."""

    id: str
    room: str
    user_id: str
    name: str
    text: str
    ts: int
    cid: str | None = None

    def local_time(self) -> datetime:
        """When the server stored it, in the local time zone."""
        return datetime.fromtimestamp(self.ts / 1000).astimezone()


@dataclass(frozen=True, slots=True)
class Joined:
    """The answer to a join.

    `rejoin` is set by the library: True when it joined the room again by itself after a
    reconnect (with `since`, the last chat id it had seen there). `recovered` is the
    server's: True when nothing after `since` is missing, False when the history no longer
    reached back (messages may have been missed), None when no `since` was given.
    """

    room: str
    members: tuple[Member, ...]
    history: tuple[Chat, ...]
    recovered: bool | None = None
    rejoin: bool = False

    @property
    def incomplete(self) -> bool:
        """True when the server could not prove that nothing was missed since `since`."""
        return self.recovered is False


@dataclass(frozen=True, slots=True)
class Left:
    """The answer to a leave."""

    room: str


@dataclass(frozen=True, slots=True)
class Presence:
    """A user's first connection joined a room (`online`) or its last one left (`offline`)."""

    user_id: str
    name: str
    room: str
    status: str


@dataclass(frozen=True, slots=True)
class Error:
    """A refused request the library could not tie to a call of yours (those raise).

    `room` is set by the library when the refusal was of its own rejoin of that room.
    """

    code: str
    message: str
    ref: str | None = None
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A frame of a type this library does not know (or a known type it could not read)."""

    type: str | None
    data: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """Reported by the library: the connection is down and it tries again in `delay` s.

    `attempt` counts the tries since the connection was lost (1 right after the drop);
    `code` and `reason` say why the last connection closed or the last try failed.
    """

    attempt: int
    delay: float
    code: int | None
    reason: str


Frame = Welcome | Joined | Left | Chat | Presence | Error | Unknown
Event = Frame | Reconnecting


def _chat(obj: dict[str, Any]) -> Chat:
    cid = obj.get("cid")
    return Chat(
        id=str(obj["id"]),
        room=str(obj["room"]),
        user_id=str(obj["userId"]),
        name=str(obj["name"]),
        text=str(obj["text"]),
        ts=int(obj["ts"]),
        cid=cid if isinstance(cid, str) else None,
    )


def parse_frame(obj: Any) -> Frame:
    """One decoded server frame as a typed value (`Unknown` for anything unexpected)."""
    if not isinstance(obj, dict):
        return Unknown(None, {"value": obj})
    kind = obj.get("type")
    try:
        if kind == "chat":
            return _chat(obj)
        if kind == "presence":
            return Presence(
                str(obj["userId"]), str(obj["name"]), str(obj["room"]), str(obj["status"])
            )
        if kind == "joined":
            recovered = obj.get("recovered")
            return Joined(
                room=str(obj["room"]),
                members=tuple(Member(str(m["userId"]), str(m["name"])) for m in obj["members"]),
                history=tuple(_chat(m) for m in obj.get("history") or ()),
                recovered=recovered if isinstance(recovered, bool) else None,
            )
        if kind == "left":
            return Left(str(obj["room"]))
        if kind == "error":
            ref = obj.get("ref")
            return Error(
                str(obj["code"]), str(obj.get("message", "")), ref if isinstance(ref, str) else None
            )
        if kind == "welcome":
            return Welcome(str(obj["userId"]), str(obj["name"]), str(obj.get("node", "")))
    except (KeyError, TypeError, ValueError):
        pass
    return Unknown(kind if isinstance(kind, str) else None, obj)

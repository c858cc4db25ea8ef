"""The server API's bodies: pydantic models that validate what comes in and describe what goes
out (they are the schemas of /api/openapi.json, see openapi.py).

Requests are strict (a number is not a text) and ignore fields they do not know, as the wire
contract's frames do. Responses are built from these models, but for the history, whose
chat messages are the stored wire JSON, spliced in as they are (see `ChatMessage`).
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from ..protocol import MAX_ID

API_USER = "api"  # the userId and name of an API message that gives none

# Every `error` the API answers: the wire contract's codes it uses, and two of HTTP's own
# (`not_found`, `method_not_allowed`).
ApiErrorCode = Literal[
    "bad_json",
    "bad_message",
    "bad_room",
    "too_long",
    "unauthorized",
    "rate_limited",
    "unavailable",
    "not_found",
    "method_not_allowed",
]
ERROR_CODES: tuple[str, ...] = get_args(ApiErrorCode)
NOT_FOUND: ApiErrorCode = "not_found"
METHOD_NOT_ALLOWED: ApiErrorCode = "method_not_allowed"


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class PostMessage(_Request):
    """A chat message to a room, said by an integration."""

    text: str = Field(description="1..GOCHAT_MAX_TEXT characters after trimming")
    name: str | None = Field(
        None,
        description="display name: 1-32 printable characters, not a reserved name "
        "(system, admin, operator, moderator, gochat, any case); default `api`",
    )
    userId: str | None = Field(
        None, description="the sender's userId, under the same rules as `name`; default `api`"
    )
    cid: Annotated[str, Field(max_length=MAX_ID)] | None = Field(
        None, description="the caller's own id for the message, echoed in the chat message"
    )


class PostNotice(_Request):
    """A system notice to a room (the console's notice)."""

    text: str = Field(description="1..GOCHAT_MAX_TEXT characters after trimming")


class PostDisconnect(_Request):
    """Why a connection is closed (the console's kick); the body may be left out."""

    reason: str | None = Field(
        None, description="the close frame's reason, cut to 120 bytes; default: a generic one"
    )


class MessagePosted(BaseModel):
    """The message is published: every member on every node receives it with this id."""

    id: str


class NoticeSent(BaseModel):
    """The notice is published; `members` is the room's member count just before."""

    id: str
    members: int


class Disconnected(BaseModel):
    """`kicked`: closed on this node; `sent`: the request went to the node that holds it."""

    status: Literal["kicked", "sent"]


class RoomInfo(BaseModel):
    room: str
    members: int = Field(description="distinct users in the room, cluster-wide")


class RoomList(BaseModel):
    """Every room with at least one member, on any node, by name."""

    rooms: list[RoomInfo]


class MemberInfo(BaseModel):
    userId: str
    name: str


class MemberList(BaseModel):
    """The room's members across the cluster, one entry per user."""

    members: list[MemberInfo]


class ChatMessage(BaseModel):
    """A `chat` frame, exactly as members received it (fields may be added: ignore those you
    do not know)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["chat"]
    id: str
    room: str
    userId: str
    name: str
    text: str
    ts: int = Field(description="ms since the epoch")
    cid: str | None = Field(None, description="present when the sender gave one")
    via: Literal["api"] | None = Field(
        None, description="`api` on a message posted through this API; absent otherwise"
    )
    system: bool | None = Field(None, description="true on an operator's notice; else absent")


class HistoryPage(BaseModel):
    """Kept chat messages of a room, oldest first."""

    messages: list[ChatMessage]
    recovered: bool | None = Field(
        description="with `since`: true when no message after it is missing, false when it "
        "is no longer kept (then the messages are all that is kept); null without `since`"
    )


class ApiError(BaseModel):
    """Any refusal."""

    error: ApiErrorCode
    message: str

"""The server API: an aiohttp sub-app at /api for integrations (bots, back ends, scripts).

A message posted here takes a client's path from the broker on: the same checks as a
client's `chat` (chat/publishing.py), the same broker call, so the same order, ids, history
and delivery on every node; it carries `"via": "api"`, which no client can set. The kick and
the notice are the console's own actions (passed in by app.py, which alone sees both), so
they are logged and tapped as the console's are, with the actor `api@<address>`.

Every answer is JSON; a refusal is `{"error": code, "message": ...}` (models.ApiError). The
middleware turns the known refusals into their status (400, 401, 404, 413, 429, 503); any
other exception is a bug and stays aiohttp's logged 500.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .. import __version__
from ..brokers.base import (
    CHAT_PREFIX,
    BrokerUnavailable,
    Repeat,
    chat_suffix,
    dedupe_key,
    repeat_id,
)
from ..chat.ws import display_name
from ..keys import BROKER, SETTINGS, TAP
from ..protocol import MAX_ID, ErrorCode, ProtocolError, check_room, check_text, has_bad_chars
from .access import ApiKey, Refused, Throttle
from .models import (
    API_USER,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    Disconnected,
    HistoryPage,
    MemberInfo,
    MemberList,
    MessagePosted,
    NoticeSent,
    PostDisconnect,
    PostMessage,
    PostNotice,
    RoomInfo,
    RoomList,
)
from .openapi import Endpoint, QueryParam, document

PREFIX = "/api"
KICK_REASON = "disconnected by the server API"
M = TypeVar("M", bound=BaseModel)


class OperatorActions(Protocol):
    """The console's actions the API offers to machines (console/state.py `Console`)."""

    async def kick(self, conn_id: str, reason: str, by: str) -> str:
        """Close a connection with 4001 on whichever node holds it: "kicked" or "sent";
        LookupError when unknown, BrokerUnavailable when the request cannot travel."""

    async def notice(self, room: str, text: str, by: str) -> tuple[str, int]:
        """Say `text` in `room` as the system user: its id and the room's member count
        (ProtocolError when refused)."""


@dataclass(frozen=True)
class ApiState:
    """What the sub-app holds: its key (and throttle), the console's actions, its document."""

    key: ApiKey
    actions: OperatorActions
    openapi: bytes


API = web.AppKey("api", ApiState)
CALLER = web.RequestKey("api_caller", str)  # `api@ip:port`: the actor in logs and events


# --- reading requests ---------------------------------------------------------------------


def bad_message(message: str) -> NoReturn:
    raise ProtocolError(ErrorCode.BAD_MESSAGE, message)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# Strict JSON, as the WebSocket's frames (protocol.py): no NaN/Infinity, no repeated key.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {'required' if err['type'] == 'missing' else err['msg'].lower()}")
    return "; ".join(parts)


async def read_body(request: web.Request, model: type[M], optional: bool = False) -> M:
    """The request's JSON object as `model`: bad_json when it is not one JSON object,
    bad_message when a field is missing or wrong, 413 over GOCHAT_MAX_FRAME bytes."""
    limit = request.config_dict[SETTINGS].max_frame
    if request.content_length is not None and request.content_length > limit:
        raise Refused(413, ErrorCode.TOO_LONG.value, f"body over {limit} bytes")
    raw = await request.read()
    if len(raw) > limit:
        raise Refused(413, ErrorCode.TOO_LONG.value, f"body over {limit} bytes")
    if optional and not raw.strip():
        return model()
    try:
        obj = _DECODER.decode(raw.decode())
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {str(exc)[:80]}") from None
    if type(obj) is not dict:
        raise ProtocolError(ErrorCode.BAD_JSON, "the body must be one JSON object")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        bad_message(_describe(exc))


def path_room(request: web.Request) -> str:
    room = request.match_info["room"]
    check_room(room)
    return room


def identity(raw: str | None, field: str) -> str:
    """A `name` or `userId` under /ws's rules for a display name (reserved names refused,
    so that nothing posted here can pass for the system's notices); `api` when absent."""
    if raw is None:
        return API_USER
    if not raw.strip():
        bad_message(f"{field}: empty")
    try:
        return display_name(raw)
    except web.HTTPBadRequest as exc:
        bad_message(f"{field}: {exc.text}")


def reply(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        body=model.model_dump_json(exclude_none=True).encode(),
        status=status,
        content_type="application/json",
    )


# --- views --------------------------------------------------------------------------------


async def post_message(request: web.Request) -> web.Response:
    """A chat message to a room, from an integration."""
    settings = request.config_dict[SETTINGS]
    broker = request.config_dict[BROKER]
    room = path_room(request)
    body = await read_body(request, PostMessage)
    text = check_text(body.text, settings.max_text)
    user_id = identity(body.userId, "userId")
    name = identity(body.name, "name")
    if body.cid is not None and has_bad_chars(body.cid):
        bad_message("cid: invalid characters")
    fields: dict[str, Any] = {
        "room": room,
        "userId": user_id,
        "name": name,
        "text": text,
        "ts": time.time_ns() // 1_000_000,
    }
    if body.cid is not None:
        fields["cid"] = body.cid
    fields["via"] = "api"  # set here only: a client's chat never carries it
    suffix = chat_suffix(fields)
    # a cid already posted by this userId in this room: the first message's id, nothing new
    dedupe = dedupe_key(user_id, body.cid) if body.cid is not None else None
    pending = broker.submit(room, suffix, dedupe)
    answer = pending if isinstance(pending, bytes) else await pending
    if isinstance(answer, Repeat):
        return reply(MessagePosted(id=repeat_id(answer).decode()), 201)
    msg_id = answer.decode()
    tap = request.config_dict[TAP]
    if tap.active:
        wire = CHAT_PREFIX + msg_id.encode() + suffix
        tap.emit(
            "PUBLISH", request[CALLER], broker.channel(room), wire.decode(), room=room, user=user_id
        )
    return reply(MessagePosted(id=msg_id), 201)


async def get_rooms(request: web.Request) -> web.Response:
    counts = await request.config_dict[BROKER].rooms()
    return reply(RoomList(rooms=[RoomInfo(room=r, members=n) for r, n in counts.items()]))


async def get_members(request: web.Request) -> web.Response:
    room = path_room(request)
    members = await request.config_dict[BROKER].members(room)
    return reply(MemberList(members=[MemberInfo(**m) for m in members]))


def _limit(raw: str | None, history: int) -> int | None:
    if raw is None:
        return None
    limit = int(raw) if raw.isascii() and raw.isdigit() else 0  # no sign, space or "_"
    if not 1 <= limit <= history:
        bad_message(f"limit: an integer from 1 to {history} (GOCHAT_HISTORY)")
    return limit


async def get_history(request: web.Request) -> web.Response:
    """The room's kept messages, oldest first: the stored frames, spliced in as they are."""
    settings = request.config_dict[SETTINGS]
    room = path_room(request)
    since = request.query.get("since")
    if since is not None and (not since or len(since) > MAX_ID or has_bad_chars(since)):
        bad_message(f"since: a message id of 1 to {MAX_ID} characters")
    limit = _limit(request.query.get("limit"), settings.history)
    kept, recovered = await request.config_dict[BROKER].history(room, since)
    if limit is not None:  # after `since`: the first ones (page on from the last); else the newest
        kept = kept[:limit] if since is not None else kept[-limit:]
    flag = b"null" if recovered is None else b"true" if recovered else b"false"
    body = b'{"messages":[' + b",".join(wire for _, wire in kept) + b'],"recovered":' + flag + b"}"
    return web.Response(body=body, content_type="application/json")


async def post_notice(request: web.Request) -> web.Response:
    """The console's notice: a system message to a room; the count of members it reaches."""
    room = path_room(request)
    body = await read_body(request, PostNotice)
    msg_id, members = await request.app[API].actions.notice(room, body.text, request[CALLER])
    return reply(NoticeSent(id=msg_id, members=members))


async def post_disconnect(request: web.Request) -> web.Response:
    """The console's kick: close a connection with 4001, on whichever node holds it."""
    conn = request.match_info["id"]
    body = await read_body(request, PostDisconnect, optional=True)
    reason = body.reason or ""
    if has_bad_chars(reason):
        bad_message("reason: invalid characters")
    try:
        status = await request.app[API].actions.kick(
            conn, reason.strip() or KICK_REASON, request[CALLER]
        )
    except LookupError:
        raise Refused(404, NOT_FOUND, f"no connection {conn}") from None
    kicked = status == "kicked"
    return reply(Disconnected(status="kicked" if kicked else "sent"), 200 if kicked else 202)


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[API].openapi, content_type="application/json")


ENDPOINTS = [
    Endpoint(
        "POST",
        "/rooms/{room}/messages",
        post_message,
        "Post a chat message to a room",
        MessagePosted,
        statuses=(201,),
        body=PostMessage,
        errors=(400, 413, 503),
        description="Checked as a client's chat and published the same way (same order, "
        'ids and history, every node); members receive it with `"via": "api"`.',
    ),
    Endpoint(
        "GET", "/rooms", get_rooms, "Rooms with members, cluster-wide", RoomList, errors=(503,)
    ),
    Endpoint(
        "GET",
        "/rooms/{room}/members",
        get_members,
        "A room's members, cluster-wide",
        MemberList,
        errors=(400, 503),
    ),
    Endpoint(
        "GET",
        "/rooms/{room}/history",
        get_history,
        "A room's kept chat messages, oldest first",
        HistoryPage,
        query=(
            QueryParam(
                "since",
                {"type": "string", "maxLength": MAX_ID},
                "a message id: only the messages after it",
            ),
            QueryParam(
                "limit",
                {"type": "integer", "minimum": 1},
                "at most this many (up to GOCHAT_HISTORY): with `since` the first ones after "
                "it, else the newest",
            ),
        ),
        errors=(400, 503),
    ),
    Endpoint(
        "POST",
        "/rooms/{room}/notice",
        post_notice,
        "Send a system notice to a room (the console's notice)",
        NoticeSent,
        body=PostNotice,
        errors=(400, 413, 503),
    ),
    Endpoint(
        "POST",
        "/connections/{id:.+}/disconnect",
        post_disconnect,
        "Close a connection with 4001 (the console's kick)",
        Disconnected,
        statuses=(200, 202),
        body=PostDisconnect,
        body_required=False,
        errors=(400, 404, 413, 503),
        description="The id is the connection's, `node/n` as the console shows it (the slash "
        "may be sent as is or as %2F). 200 when this node held it; 202 when the request was "
        "sent to its node (which closes it if it still holds it).",
    ),
]


# --- assembly -----------------------------------------------------------------------------


@web.middleware
async def api_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every /api path: the key first, then the handler; known refusals become JSON errors."""
    try:
        request[CALLER] = request.app[API].key.check(request, request.config_dict[SETTINGS])
        response: web.StreamResponse = await handler(request)
        return response
    except Refused as refused:
        return error(refused.status, refused.code, refused.message, refused.headers)
    except ProtocolError as err:
        status = 503 if err.code is ErrorCode.UNAVAILABLE else 400
        return error(status, err.code.value, err.message)
    except BrokerUnavailable as exc:
        return error(503, ErrorCode.UNAVAILABLE.value, str(exc) or "broker down")
    except web.HTTPNotFound:
        return error(404, NOT_FOUND, f"no such API path: {request.method} {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return error(405, METHOD_NOT_ALLOWED, f"{request.method} not allowed here", allow)
    except web.HTTPRequestEntityTooLarge:
        return error(413, ErrorCode.TOO_LONG.value, "body too large")


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = json.dumps({"error": code, "message": message}, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


async def _no_store(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Cache-Control"] = "no-store"


def create_api_app(key: ApiKey, actions: OperatorActions) -> web.Application:
    """The /api sub-app: its routes, the key check, and the document of both."""
    doc = document(
        ENDPOINTS,
        PREFIX,
        __version__,
        "gochat's server HTTP API (docs/api.md). Every request needs "
        "`Authorization: Bearer <GOCHAT_API_KEY>`.",
    )
    api = web.Application(middlewares=[api_middleware])
    api[API] = ApiState(key, actions, json.dumps(doc).encode())
    for ep in ENDPOINTS:
        api.router.add_route(ep.method, ep.path, ep.handler)
    api.router.add_route("GET", "/openapi.json", get_openapi)
    api.on_response_prepare.append(_no_store)
    return api


def add_api(app: web.Application, actions: OperatorActions, throttle: Throttle) -> None:
    """Mount the API at /api when GOCHAT_API_KEY is set (unset: nothing is mounted, so every
    /api path answers 404). `actions` are the console's kick and notice; `throttle` counts
    wrong keys per address."""
    key = app[SETTINGS].api_key
    if key is not None:
        app.add_subapp(PREFIX, create_api_app(ApiKey(key, throttle), actions))

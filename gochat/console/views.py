"""The operations console: an aiohttp sub-app at /admin, plus /metrics on the main app.

Who may use it (the auth middleware, login and logout) is access.py; this module is the
views, the actions, the event stream and the assembly of the sub-app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import WSMsgType, web

from ..assets import asset_dir
from ..brokers.base import BrokerUnavailable
from ..events import KINDS, EventFilter
from ..keys import BROKER, HUB, SETTINGS, TAP
from ..protocol import ErrorCode, ProtocolError
from .access import (
    FORM_TYPES,
    OPERATOR,
    admin_auth,
    authenticate,
    login,
    login_page,
    logout,
    same_origin,
    unauthorized,
)
from .keys import CONSOLE, METRICS
from .metrics import CONTENT_TYPE, Metrics
from .state import SEND_INTERVAL, Console, Viewer

log = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
STATIC_FILES = frozenset({"console.css", "console.js", "login.js"})
# What the login page needs; nothing in them is secret.
# --- views --------------------------------------------------------------------------------


def paging(request: web.Request, prefix: str = "") -> tuple[str, int, int, str]:
    """(q, page, limit, sort) from the query string, clamped; the tables check `sort`."""
    query = request.query
    q = query.get(prefix + "q", "").strip()[:128]
    try:
        page = max(0, int(query.get(prefix + "page", "0")))
        limit = min(MAX_PAGE_SIZE, max(1, int(query.get(prefix + "limit", str(PAGE_SIZE)))))
    except ValueError:
        raise web.HTTPBadRequest(text="page and limit must be integers") from None
    return q, page, limit, query.get(prefix + "sort", "").strip()[:32]


async def snapshot_of(request: web.Request) -> dict[str, Any]:
    """The snapshot; `samples=0` leaves the charts' samples out (the page asks for them
    once, then gets each new one from the event stream)."""
    console = request.config_dict[CONSOLE]
    try:
        connections = console.tables.connections(*paging(request))
        rooms = await console.tables.rooms(*paging(request, "room_"))
    except ValueError as exc:  # an unknown sort key
        raise web.HTTPBadRequest(text=str(exc)) from None
    snap = {
        "node": console.node_id,
        "time": time.time(),
        "nodes": await console.tables.nodes(),
        "connections": connections,
        "rooms": rooms,
    }
    if request.query.get("samples") != "0":
        snap["load"] = console.load.to_json()
    return snap


async def snapshot(request: web.Request) -> web.Response:
    return web.json_response(await snapshot_of(request))


async def console_page(request: web.Request) -> web.Response:
    operator = request[OPERATOR]
    console = request.config_dict[CONSOLE]
    csrf = console.auth.csrf_token(operator.session) if operator.session is not None else ""
    context = {
        "snap": await snapshot_of(request),
        "csrf": csrf,
        "kinds": KINDS,
        "query": request.query,
    }
    return aiohttp_jinja2.render_template("console.html", request, context)


async def connection_page(request: web.Request) -> web.Response:
    """`/admin/connections/{id}`: one connection of this node in detail."""
    operator = request[OPERATOR]
    console = request.config_dict[CONSOLE]
    conn_id = request.match_info["conn"]
    detail = await console.tables.connection(conn_id)
    csrf = console.auth.csrf_token(operator.session) if operator.session is not None else ""
    context = {"conn_id": conn_id, "c": detail, "node": console.node_id, "csrf": csrf}
    response = aiohttp_jinja2.render_template("connection.html", request, context)
    if detail is None:
        response.set_status(404)
    return response


async def connection_api(request: web.Request) -> web.Response:
    """`/admin/api/connections/{id}`: the same as JSON (404 when it is not on this node)."""
    conn_id = request.match_info["conn"]
    detail = await request.config_dict[CONSOLE].tables.connection(conn_id)
    if detail is None:
        return web.json_response({"error": f"no connection {conn_id} on this node"}, status=404)
    return web.json_response(detail)


async def room_api(request: web.Request) -> web.Response:
    """`/admin/api/rooms/{room}`: its member count cluster-wide, before a notice."""
    try:
        data = await request.config_dict[CONSOLE].members(request.match_info["room"])
    except ProtocolError as err:
        status = 503 if err.code is ErrorCode.UNAVAILABLE else 400
        return web.json_response({"error": err.code.value, "message": err.message}, status=status)
    return web.json_response(data)


async def static_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(asset_dir("admin") / "static" / name)


# --- actions ------------------------------------------------------------------------------


async def action_body(request: web.Request) -> tuple[dict[str, str], bool]:
    """The request's fields (JSON object or form) and whether it came from a plain form."""
    if request.content_type in FORM_TYPES:
        try:
            form = await request.post()
        except (ValueError, LookupError):  # bytes not in its charset, or an unknown charset
            raise web.HTTPBadRequest(text="the form is not in its charset") from None
        return {k: v for k, v in form.items() if isinstance(v, str)}, True
    try:
        data = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="expected a JSON object") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return {k: v for k, v in data.items() if isinstance(v, str)}, False


def action_reply(from_form: bool, status: int, body: dict[str, Any]) -> web.Response:
    if from_form and status < 400:
        raise web.HTTPSeeOther("/admin/")  # plain form without JS: back to the console
    return web.json_response(body, status=status)


async def kick(request: web.Request) -> web.Response:
    fields, from_form = await action_body(request)
    conn = fields.get("conn", "").strip()
    if not conn:
        return action_reply(from_form, 400, {"error": "conn is required"})
    try:
        status = await request.config_dict[CONSOLE].kick(
            conn, fields.get("reason", ""), request[OPERATOR].addr
        )
    except LookupError:
        return action_reply(from_form, 404, {"error": f"no connection {conn}"})
    except BrokerUnavailable as exc:
        return action_reply(from_form, 503, {"error": "unavailable", "message": str(exc)})
    return action_reply(from_form, 200 if status == "kicked" else 202, {"status": status})


async def notice(request: web.Request) -> web.Response:
    fields, from_form = await action_body(request)
    try:
        msg_id, members = await request.config_dict[CONSOLE].notice(
            fields.get("room", "").strip(), fields.get("text", ""), request[OPERATOR].addr
        )
    except ProtocolError as err:
        status = 503 if err.code is ErrorCode.UNAVAILABLE else 400
        return action_reply(from_form, status, {"error": err.code.value, "message": err.message})
    return action_reply(from_form, 200, {"status": "sent", "id": msg_id, "members": members})


# --- event stream -------------------------------------------------------------------------


def query_filter(request: web.Request) -> EventFilter:
    """The stream's filter from the query string: `room`, `user`, `node`, `text`, and `kinds`
    (comma-separated); the WebSocket's `filter` messages replace it."""
    query = request.query
    data: dict[str, Any] = {
        name: query[name] for name in ("room", "user", "node", "text") if name in query
    }
    kinds = [k.strip() for k in query.get("kinds", "").split(",") if k.strip()]
    if kinds:
        data["kinds"] = kinds
    return EventFilter.from_json(data)


def hello(console: Console) -> dict[str, Any]:
    return {"type": "hello", "node": console.node_id, "kinds": KINDS}


def wants_samples(request: web.Request) -> bool:
    """`samples=1`: the stream also carries the charts' samples."""
    return request.query.get("samples") == "1"


async def pump(ws: web.WebSocketResponse, viewer: Viewer) -> None:
    """Send a viewer its feed, batched; a slow browser only loses its own oldest lines."""
    with suppress(ConnectionError, RuntimeError):
        while not ws.closed:
            events, dropped, samples = await viewer.take()
            if samples:
                await ws.send_str(json.dumps({"type": "samples", "samples": samples}))
            if events or dropped:
                batch = {"type": "events", "events": events, "dropped": dropped}
                await ws.send_str(json.dumps(batch))
            await asyncio.sleep(SEND_INTERVAL)


async def events(request: web.Request) -> web.StreamResponse:
    """`/admin/events`: Server-Sent Events when asked for `text/event-stream` (and not an
    upgrade), else the WebSocket stream."""
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    accept = request.headers.get("Accept", "").lower()
    if request.method == "GET" and not upgrade and "text/event-stream" in accept:
        return await events_sse(request)
    return await events_ws(request)


async def events_ws(request: web.Request) -> web.StreamResponse:
    """The live event stream: `filter` messages in, batches of event lines out."""
    if not same_origin(request):
        raise web.HTTPForbidden(text="origin not allowed")
    settings = request.config_dict[SETTINGS]
    console = request.config_dict[CONSOLE]
    ws = web.WebSocketResponse(heartbeat=settings.heartbeat, max_msg_size=8192)
    await ws.prepare(request)
    viewer = Viewer(ws, filter=query_filter(request), wants_samples=wants_samples(request))
    await ws.send_str(json.dumps(hello(console)))
    console.add_viewer(viewer)
    task = asyncio.get_running_loop().create_task(pump(ws, viewer))
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            try:
                data = json.loads(msg.data)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("type") == "filter":
                viewer.filter = EventFilter.from_json(data)
    finally:
        console.remove_viewer(viewer)
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    return ws


def sse(data: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event: one `data:` line of JSON (which never holds a raw newline)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


SSE_KEEPALIVE = b": keep-alive\n\n"
SSE_BYE = sse({"code": 1001, "reason": "server shutting down"}, "close")


async def events_sse(request: web.Request) -> web.StreamResponse:
    """The live event stream as Server-Sent Events: a `hello` event, then one unnamed event
    per line (a `dropped` event first when the viewer's feed lost lines), a comment every
    GOCHAT_HEARTBEAT seconds, and a `close` event (1001) on shutdown. Filters: the query;
    `samples=1` adds a `sample` event per chart sample."""
    if not same_origin(request):
        raise web.HTTPForbidden(text="origin not allowed")
    settings = request.config_dict[SETTINGS]
    console = request.config_dict[CONSOLE]
    response = web.StreamResponse(headers={"X-Accel-Buffering": "no"})
    response.content_type = "text/event-stream"
    viewer = Viewer(None, filter=query_filter(request), wants_samples=wants_samples(request))
    await response.prepare(request)
    console.add_viewer(viewer)
    closing = asyncio.ensure_future(viewer.closing.wait())
    try:
        await response.write(sse(hello(console), "hello"))
        while True:
            take = asyncio.ensure_future(viewer.take())
            await asyncio.wait(
                (take, closing), timeout=settings.heartbeat, return_when=asyncio.FIRST_COMPLETED
            )
            if not take.done():
                take.cancel()
                with suppress(asyncio.CancelledError):
                    await take
                if closing.done():
                    break
                await response.write(SSE_KEEPALIVE)
                continue
            lines, dropped, samples = take.result()
            chunk = b"".join(sse(sample, "sample") for sample in samples)
            chunk += sse({"dropped": dropped}, "dropped") if dropped else b""
            await response.write(chunk + b"".join(sse(line) for line in lines))
            if closing.done():
                break
            await asyncio.sleep(SEND_INTERVAL)  # at most 20 writes a second, as the WebSocket
        await response.write(SSE_BYE)
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the viewer went away (noticed at the next write: a keep-alive at the latest)
    finally:
        console.remove_viewer(viewer)
        closing.cancel()
        viewer.ended.set()
    return response


# --- metrics ------------------------------------------------------------------------------


async def metrics(request: web.Request) -> web.Response:
    if authenticate(request) is None:
        raise unauthorized()
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


# --- assembly -----------------------------------------------------------------------------


def _uptime(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {s:02d}s"
    return f"{s}s"


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 1048576:.1f} MiB"


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def _stamp(ts: float) -> str:
    """A time in UTC, with its date when that is not today's (the page shows local time
    once its script runs)."""
    when = datetime.fromtimestamp(ts, UTC)
    if when.date() == datetime.now(UTC).date():
        return when.strftime("%H:%M:%S UTC")
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _sort_link(query: Any, prefix: str, key: str, descending_first: bool) -> str:
    """The query string that sorts a table by `key`: the other way round when it already
    is, starting from the page's own query (filters and the other table kept, page reset)."""
    params = {k: v for k, v in query.items() if k != prefix + "page"}
    current = query.get(prefix + "sort", "")
    if current == key:
        params[prefix + "sort"] = "-" + key
    elif current == "-" + key:
        params[prefix + "sort"] = key
    else:
        params[prefix + "sort"] = ("-" if descending_first else "") + key
    return "?" + urlencode(params)


def _aria_sort(query: Any, prefix: str, key: str) -> str:
    current = query.get(prefix + "sort", "")
    return {key: "ascending", "-" + key: "descending"}.get(current, "none")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


async def _cache_headers(request: web.Request, response: web.StreamResponse) -> None:
    if response.status != 101:
        static = request.path.startswith("/admin/static/")
        response.headers["Cache-Control"] = "no-cache" if static else "no-store"


def create_admin_app() -> web.Application:
    """The /admin sub-app: pages, JSON API, actions and the event stream."""
    admin = web.Application(middlewares=[admin_auth])
    aiohttp_jinja2.setup(
        admin,
        loader=jinja2.FileSystemLoader(asset_dir("admin") / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        filters={"uptime": _uptime, "mib": _mib, "clock": _clock, "iso": _iso, "stamp": _stamp},
    )
    env = aiohttp_jinja2.get_env(admin)
    env.globals.update(sort_link=_sort_link, aria_sort=_aria_sort)
    admin.router.add_get("", console_page)
    admin.router.add_get("/", console_page)
    admin.router.add_get("/login", login_page)
    admin.router.add_post("/login", login)
    admin.router.add_post("/logout", logout)
    admin.router.add_get("/static/{name}", static_file)
    admin.router.add_get("/api/snapshot", snapshot)
    admin.router.add_post("/api/kick", kick)
    admin.router.add_post("/api/notice", notice)
    admin.router.add_get("/api/rooms/{room}", room_api)
    admin.router.add_get("/api/connections/{conn:.+}", connection_api)
    admin.router.add_get("/connections/{conn:.+}", connection_page)
    admin.router.add_get("/events", events)
    admin.on_response_prepare.append(_cache_headers)
    return admin


def add_admin(app: web.Application) -> None:
    """Mount the console at /admin and /metrics on `app` (after the Hub and broker exist)."""
    settings = app[SETTINGS]
    token = settings.admin_token or secrets.token_urlsafe(24)
    console = app[CONSOLE] = Console(settings, app[HUB], app[BROKER], app[TAP], token)
    app[METRICS] = Metrics(app[HUB], app[BROKER])
    app.add_subapp("/admin", create_admin_app())
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(console.ticker_ctx)

    async def close_viewers(app: web.Application) -> None:
        await console.close_viewers()

    app.on_shutdown.append(close_viewers)
    if settings.admin_token is None:

        async def log_console_url(app: web.Application) -> None:
            host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            if ":" in host:
                host = f"[{host}]"
            log.warning(
                "GOCHAT_ADMIN_TOKEN is not set; this run's console: "
                "http://%s:%d/admin/login?token=%s",
                host,
                settings.port,
                token,
            )

        app.on_startup.append(log_console_url)

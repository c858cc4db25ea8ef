"""The operations console: an aiohttp sub-app at /admin, plus /metrics on the main app.

Auth: every console path but the login page and its two assets needs the admin token, as a
signed session cookie (from the login form) or `Authorization: Bearer <token>`. Without it
the HTML page redirects to the login page and everything else answers 401 with nothing in
it. State-changing requests also need a same-origin `Origin` (when the browser sends one)
and, for cookie sessions, the session's CSRF token (`X-CSRF-Token` or a `csrf` form field).
Failed token attempts are throttled per client address (429 with Retry-After).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import WSMsgType, web

from ..assets import asset_dir
from ..brokers.base import BrokerUnavailable
from ..events import KINDS, EventFilter, loggable
from ..forwarded import client_address, own_origin
from ..keys import BROKER, HUB, SETTINGS, TAP
from ..protocol import ErrorCode, ProtocolError
from .auth import COOKIE_NAME, Session
from .keys import CONSOLE, METRICS
from .metrics import CONTENT_TYPE, Metrics
from .state import SEND_INTERVAL, Console, Viewer

log = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
STATIC_FILES = frozenset({"console.css", "console.js", "login.js"})
# What the login page needs; nothing in them is secret.
PUBLIC = frozenset(
    {
        ("GET", "/admin/login"),
        ("POST", "/admin/login"),
        ("GET", "/admin/static/console.css"),
        ("GET", "/admin/static/login.js"),
    }
)
HTML_PAGES = frozenset({"/admin", "/admin/"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is calling: their address, and their session (None for a bearer token)."""

    addr: str
    session: Session | None


OPERATOR = web.RequestKey("operator", Operator)


# --- auth ---------------------------------------------------------------------------------


def same_origin(request: web.Request) -> bool:
    """No Origin (not a browser) or exactly ours; GOCHAT_ALLOWED_ORIGINS do not apply here.

    Under `Referrer-Policy: no-referrer` browsers send `Origin: null` on form posts; then
    the browser's own `Sec-Fetch-Site` must say the request came from this origin.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin.strip() == "null":
        return request.headers.get("Sec-Fetch-Site") == "same-origin"
    return origin.strip().rstrip("/").lower() == own_origin(request, request.config_dict[SETTINGS])


def is_secure(request: web.Request) -> bool:
    return own_origin(request, request.config_dict[SETTINGS]).startswith("https:")


def too_many(retry_after: float) -> web.HTTPTooManyRequests:
    return web.HTTPTooManyRequests(
        text="too many failed attempts", headers={"Retry-After": str(max(1, round(retry_after)))}
    )


def unauthorized() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="gochat console"'}
    )


def authenticate(request: web.Request) -> Operator | None:
    """The caller's identity from a bearer token or a session cookie; None when neither.

    A wrong bearer token counts as a failed login; a throttled address gets 429.
    """
    console = request.config_dict[CONSOLE]
    addr = client_address(request, request.config_dict[SETTINGS])
    ip = addr.rsplit(":", 1)[0]
    now = time.time()
    header = request.headers.get("Authorization")
    if header is not None:
        wait = console.auth.throttle.retry_after(ip, now)
        if wait:
            raise too_many(wait)
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and console.auth.check_token(credential.strip()):
            return Operator(addr, None)
        console.auth.throttle.fail(ip, now)
        log.warning("console: wrong bearer token from %s", loggable(ip))
        return None
    session = console.auth.verify(request.cookies.get(COOKIE_NAME), now)
    return Operator(addr, session) if session is not None else None


@web.middleware
async def admin_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every /admin path: credentials first (401 / login redirect), then Origin and CSRF."""
    method = "GET" if request.method == "HEAD" else request.method
    if (method, request.path) in PUBLIC:
        response: web.StreamResponse = await handler(request)
        return response
    operator = authenticate(request)
    if operator is None:
        if method == "GET" and request.path in HTML_PAGES:
            raise web.HTTPFound("/admin/login")
        raise unauthorized()
    request[OPERATOR] = operator
    if method not in SAFE_METHODS:
        if not same_origin(request):
            raise web.HTTPForbidden(text="cross-origin request refused")
        if operator.session is not None:
            candidate = request.headers.get("X-CSRF-Token")
            if candidate is None and request.content_type in FORM_TYPES:
                field = (await request.post()).get("csrf")
                candidate = field if isinstance(field, str) else None
            if not request.config_dict[CONSOLE].auth.check_csrf(operator.session, candidate):
                raise web.HTTPForbidden(text="CSRF token missing or wrong")
    response = await handler(request)
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    if authenticate(request) is not None:
        raise web.HTTPFound("/admin/")
    # the startup log's link carries the token: prefill it (login.js then drops it from
    # the address bar), but only a POST logs in
    return render_login(request, request.query.get("token", "")[:256], None, 200)


def render_login(request: web.Request, token: str, error: str | None, status: int) -> web.Response:
    context = {"token": token, "error": error, "node": request.config_dict[SETTINGS].node_id}
    return aiohttp_jinja2.render_template("login.html", request, context, status=status)


async def login(request: web.Request) -> web.StreamResponse:
    console = request.config_dict[CONSOLE]
    if not same_origin(request):
        raise web.HTTPForbidden(text="cross-origin request refused")
    ip = client_address(request, request.config_dict[SETTINGS]).rsplit(":", 1)[0]
    now = time.time()
    wait = console.auth.throttle.retry_after(ip, now)
    if wait:
        response = render_login(
            request, "", f"Too many failed attempts. Try again in {max(1, round(wait))} s.", 429
        )
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    token = (await request.post()).get("token")
    if not isinstance(token, str) or not console.auth.check_token(token.strip()):
        console.auth.throttle.fail(ip, now)
        log.warning("console: failed login from %s", loggable(ip))
        return render_login(request, "", "That token is not right.", 401)
    console.auth.throttle.succeed(ip)
    cookie, session = console.auth.issue(now)
    log.info("console: login from %s", loggable(ip))
    response = web.HTTPSeeOther("/admin/")
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=int(console.auth.ttl),
        path="/admin",
        httponly=True,
        samesite="Strict",
        secure=is_secure(request),
    )
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    operator = request[OPERATOR]
    if operator.session is not None:
        request.config_dict[CONSOLE].logout(operator.session.sid, operator.session.expires)
    response = web.HTTPSeeOther("/admin/login")
    response.del_cookie(COOKIE_NAME, path="/admin")
    raise response


# --- views --------------------------------------------------------------------------------


def paging(request: web.Request, prefix: str = "") -> tuple[str, int, int]:
    """(q, page, limit) from the query string, clamped."""
    query = request.query
    q = query.get(prefix + "q", "").strip()[:128]
    try:
        page = max(0, int(query.get(prefix + "page", "0")))
        limit = min(MAX_PAGE_SIZE, max(1, int(query.get(prefix + "limit", str(PAGE_SIZE)))))
    except ValueError:
        raise web.HTTPBadRequest(text="page and limit must be integers") from None
    return q, page, limit


async def snapshot_of(request: web.Request) -> dict[str, Any]:
    console = request.config_dict[CONSOLE]
    return {
        "node": console.node_id,
        "time": time.time(),
        "nodes": await console.nodes(),
        "connections": console.connections(*paging(request)),
        "rooms": await console.rooms(*paging(request, "room_")),
    }


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


async def static_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(asset_dir("admin") / "static" / name)


# --- actions ------------------------------------------------------------------------------


async def action_body(request: web.Request) -> tuple[dict[str, str], bool]:
    """The request's fields (JSON object or form) and whether it came from a plain form."""
    if request.content_type in FORM_TYPES:
        form = await request.post()
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
        msg_id = await request.config_dict[CONSOLE].notice(
            fields.get("room", "").strip(), fields.get("text", ""), request[OPERATOR].addr
        )
    except ProtocolError as err:
        status = 503 if err.code is ErrorCode.UNAVAILABLE else 400
        return action_reply(from_form, status, {"error": err.code.value, "message": err.message})
    return action_reply(from_form, 200, {"status": "sent", "id": msg_id})


# --- event stream -------------------------------------------------------------------------


async def pump(viewer: Viewer) -> None:
    """Send a viewer its feed, batched; a slow browser only loses its own oldest lines."""
    ws = viewer.ws
    with suppress(ConnectionError, RuntimeError):
        while not ws.closed:
            events, dropped = await viewer.feed.take()
            await ws.send_str(json.dumps({"type": "events", "events": events, "dropped": dropped}))
            await asyncio.sleep(SEND_INTERVAL)


async def events_ws(request: web.Request) -> web.StreamResponse:
    """The live event stream: `filter` messages in, batches of event lines out."""
    if not same_origin(request):
        raise web.HTTPForbidden(text="origin not allowed")
    settings = request.config_dict[SETTINGS]
    console = request.config_dict[CONSOLE]
    ws = web.WebSocketResponse(heartbeat=settings.heartbeat, max_msg_size=8192)
    await ws.prepare(request)
    viewer = Viewer(ws)
    await ws.send_str(json.dumps({"type": "hello", "node": console.node_id, "kinds": KINDS}))
    console.add_viewer(viewer)
    task = asyncio.get_running_loop().create_task(pump(viewer))
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
        filters={"uptime": _uptime, "mib": _mib, "clock": _clock, "iso": _iso},
    )
    admin.router.add_get("", console_page)
    admin.router.add_get("/", console_page)
    admin.router.add_get("/login", login_page)
    admin.router.add_post("/login", login)
    admin.router.add_post("/logout", logout)
    admin.router.add_get("/static/{name}", static_file)
    admin.router.add_get("/api/snapshot", snapshot)
    admin.router.add_post("/api/kick", kick)
    admin.router.add_post("/api/notice", notice)
    admin.router.add_get("/events", events_ws)
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

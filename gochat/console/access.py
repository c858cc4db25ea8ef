"""Who may use the console: the auth middleware, the login form and logout.

Every console path but the login page and its two assets needs the admin token, as a signed
session cookie (from the login form) or `Authorization: Bearer <token>`. Without it the HTML
page redirects to the login page and everything else answers 401 with nothing in it.
State-changing requests also need a same-origin `Origin` (when the browser sends one) and,
for cookie sessions, the session's CSRF token (`X-CSRF-Token` or a `csrf` form field).
Failed token attempts are throttled per client address (429 with Retry-After): each attempt
is counted before anything is awaited and given back when it was right, so a parallel burst
gets no more evaluations than the limit. Credentials with bytes that cannot be decoded count
as failures and get 401 (a login form that cannot be decoded: 400), with one WARNING line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from ..events import loggable
from ..forwarded import client_address, own_origin
from ..keys import SETTINGS
from .auth import COOKIE_NAME, Session
from .keys import CONSOLE

log = logging.getLogger(__name__)

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


def undecodable(value: str) -> bool:
    """Bytes that were not UTF-8 (aiohttp keeps them as lone surrogates)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return False


def authenticate(request: web.Request) -> Operator | None:
    """The caller's identity from a bearer token or a session cookie; None when neither.

    A wrong or undecodable bearer token counts as a failed login, and so does a cookie that
    is not ASCII (no cookie we issue is; it is also cleared, with a 401); a throttled address
    gets 429.
    """
    console = request.config_dict[CONSOLE]
    throttle = console.auth.throttle
    addr = client_address(request, request.config_dict[SETTINGS])
    ip = addr.rsplit(":", 1)[0]
    now = time.time()
    header = request.headers.get("Authorization")
    if header is not None:
        wait = throttle.reserve(ip, now)
        if wait:
            raise too_many(wait)
        if undecodable(header):
            log.warning("console: undecodable bearer token from %s", loggable(ip))
            return None
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and console.auth.check_token(credential.strip()):
            throttle.release(ip, now)
            return Operator(addr, None)
        log.warning("console: wrong bearer token from %s", loggable(ip))
        return None
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie is not None and not cookie.isascii():
        wait = throttle.reserve(ip, now)
        if wait:
            raise too_many(wait)
        log.warning("console: undecodable session cookie from %s", loggable(ip))
        refused = unauthorized()
        refused.del_cookie(COOKIE_NAME, path="/admin")  # a browser stuck with it recovers
        raise refused
    session = console.auth.verify(cookie, now)
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
                field = (await read_form(request)).get("csrf")
                candidate = field if isinstance(field, str) else None
            if not request.config_dict[CONSOLE].auth.check_csrf(operator.session, candidate):
                raise web.HTTPForbidden(text="CSRF token missing or wrong")
    response = await handler(request)
    return response


async def read_form(
    request: web.Request,
) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    """The request's form; 400 (and one WARNING line) when its bytes cannot be decoded."""
    try:
        return await request.post()
    except (ValueError, LookupError):  # not in its charset, or an unknown charset
        ip = client_address(request, request.config_dict[SETTINGS]).rsplit(":", 1)[0]
        log.warning("console: undecodable form from %s", loggable(ip))
        raise web.HTTPBadRequest(text="the form could not be decoded") from None


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
    throttle = console.auth.throttle
    # counted as a failure now, before the body is awaited, and given back if it is right:
    # parallel attempts each find the ones before them counted
    wait = throttle.reserve(ip, now)
    if wait:
        response = render_login(
            request, "", f"Too many failed attempts. Try again in {max(1, round(wait))} s.", 429
        )
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    token = (await read_form(request)).get("token")  # an undecodable form stays counted
    if not isinstance(token, str) or not console.auth.check_token(token.strip()):
        log.warning("console: failed login from %s", loggable(ip))
        return render_login(request, "", "That token is not right.", 401)
    throttle.release(ip, now)
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

"""Who is on the other end of a request, behind a router we trust or not (GOCHAT_TRUST_PROXY).

Shared by the chat's /ws and the console, so both read X-Forwarded-* the same way.
"""

from __future__ import annotations

from aiohttp import web

from .config import Settings


def client_address(request: web.Request, settings: Settings) -> str:
    """`ip:port` of the peer; the IP from X-Forwarded-For only when the router is trusted."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    ip, port = (str(peer[0]), str(peer[1])) if peer else (request.remote or "?", "0")
    if settings.trust_proxy:
        forwarded = request.headers.get("X-Forwarded-For", "")
        # the rightmost entry is the one our router added; the others are client-supplied
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            ip = last[:64]
    return f"{ip}:{port}"


def own_origin(request: web.Request, settings: Settings) -> str:
    """`scheme://host` of this server as the browser sees it (lower case)."""
    scheme = request.scheme
    if settings.trust_proxy:
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
    return f"{scheme}://{request.host}".lower()

"""Who may use the server API: `Authorization: Bearer <GOCHAT_API_KEY>` on every /api request.

The key is compared in constant time. Failed attempts are throttled per client address as
the console's logins are, by a throttle of the API's own (so a misconfigured integration
does not lock an operator out of the console, nor the other way round): each attempt is
counted before it is checked and given back when it was right, and over the limit the
address gets 429 with Retry-After, whatever key it sends, until its window has passed.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Protocol

from aiohttp import web

from ..config import Settings
from ..events import loggable
from ..forwarded import client_address

log = logging.getLogger(__name__)

REALM = 'Bearer realm="gochat api"'


class Throttle(Protocol):
    """Failed attempts per address (the console's LoginThrottle is one)."""

    def reserve(self, ip: str, now: float) -> float:
        """Count an attempt as failed before checking it: 0 when counted, else the seconds
        this address must wait (nothing counted)."""

    def release(self, ip: str, now: float) -> None:
        """The attempt reserved at `now` was right: it is not a failure."""


class Refused(Exception):
    """A request refused with an HTTP status, an `error` code and headers (401, 404, 413,
    429...): the API's middleware answers it as `{"error": code, "message": message}`."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class ApiKey:
    """The API key and the throttle of wrong ones."""

    def __init__(self, key: str, throttle: Throttle) -> None:
        self._key = key.encode()
        self.throttle = throttle

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison (False for bytes that were not UTF-8, which aiohttp keeps
        as lone surrogates)."""
        try:
            raw = candidate.encode()
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(raw, self._key)

    def check(self, request: web.Request, settings: Settings) -> str:
        """The caller's address (`api@ip:port`, how the audit names it) when the request
        carries the key; else raise Refused."""
        addr = client_address(request, settings)
        ip = addr.rsplit(":", 1)[0]
        header = request.headers.get("Authorization")
        if header is None:
            raise Refused(401, "unauthorized", "Authorization: Bearer <key> required", _REALM)
        now = time.time()
        wait = self.throttle.reserve(ip, now)
        if wait:
            seconds = str(max(1, round(wait)))
            raise Refused(429, "rate_limited", "too many failed attempts", {"Retry-After": seconds})
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and self.matches(credential.strip()):
            self.throttle.release(ip, now)
            return "api@" + addr
        log.warning("api: wrong or undecodable key from %s", loggable(ip))
        raise Refused(401, "unauthorized", "wrong API key", _REALM)


_REALM = {"WWW-Authenticate": REALM}

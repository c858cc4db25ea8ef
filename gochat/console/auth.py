"""The console's credentials: the admin token, signed session cookies, CSRF tokens, throttling.

Every node that shares GOCHAT_ADMIN_TOKEN derives the same signing key from it, so a cookie
issued by one node is accepted by the others behind a load balancer. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import deque
from contextlib import suppress
from dataclasses import dataclass

SESSION_TTL = 12 * 3600.0  # seconds a console login lasts
COOKIE_NAME = "gochat_admin"
MAX_FAILURES = 5  # failed token attempts per address within FAILURE_WINDOW ...
FAILURE_WINDOW = 60.0  # ... before that address gets 429 until the window has passed
MAX_TRACKED = 10_000  # addresses remembered by the throttle (oldest forgotten first)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in console: an id (for CSRF and revocation) and when it expires."""

    sid: str
    expires: float


class LoginThrottle:
    """Credential attempts per client address that failed (or are still being checked); over
    the limit, refuse for a while.

    An attempt is counted before it is evaluated (`reserve`, synchronous, before the caller
    awaits anything such as a form body), so a burst of parallel attempts gets at most
    `limit` evaluations; one that turns out right gives its place back (`release`). A success
    forgives nothing else: it proves the caller holds the token, not that the address's other
    attempts were its own.
    """

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, ip: str, now: float) -> float:
        """Seconds this address must wait before trying again (0: it may try now)."""
        failures = self._failures.get(ip)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[ip]
            return 0.0
        if len(failures) < self.limit:
            return 0.0
        return max(0.0, failures[0] + self.window - now)

    def fail(self, ip: str, now: float) -> None:
        failures = self._failures.get(ip)
        if failures is None:
            if len(self._failures) >= MAX_TRACKED:
                del self._failures[next(iter(self._failures))]
            failures = self._failures[ip] = deque(maxlen=self.limit)
        failures.append(now)

    def reserve(self, ip: str, now: float) -> float:
        """Count an attempt as failed before checking it: 0 when counted, else the seconds
        this address must wait (nothing counted)."""
        wait = self.retry_after(ip, now)
        if not wait:
            self.fail(ip, now)
        return wait

    def release(self, ip: str, now: float) -> None:
        """The attempt reserved at `now` was right: it is not a failure."""
        failures = self._failures.get(ip)
        if failures is None:
            return
        with suppress(ValueError):
            failures.remove(now)
        if not failures:
            del self._failures[ip]


class ConsoleAuth:
    """Checks the admin token and issues and verifies session cookies and CSRF tokens."""

    def __init__(self, token: str, ttl: float = SESSION_TTL) -> None:
        self._token = token.encode()
        self.ttl = ttl
        # HMAC(token, "session"): the same on every node sharing the token, and not the
        # token itself, so a leaked cookie never reveals it.
        self._key = hmac.new(self._token, b"session", hashlib.sha256).digest()
        self._revoked: dict[str, float] = {}  # sid -> its expiry (kept until then)
        self.throttle = LoginThrottle()

    @property
    def token(self) -> str:
        return self._token.decode()

    def check_token(self, candidate: str) -> bool:
        """Constant-time comparison with the admin token (False for undecodable bytes, which
        aiohttp keeps as lone surrogates)."""
        try:
            raw = candidate.encode()
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(raw, self._token)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, now: float) -> tuple[str, Session]:
        """A new session and the cookie value that carries it."""
        session = Session(secrets.token_urlsafe(16), float(int(now + self.ttl)))
        payload = f"v1.{session.sid}.{int(session.expires)}"
        return f"{payload}.{self._sign(payload)}", session

    def verify(self, value: str | None, now: float) -> Session | None:
        """The session a cookie value carries, or None if forged, expired or revoked."""
        if not value or len(value) > 256 or not value.isascii():
            return None
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != "v1":
            return None
        payload = ".".join(parts[:3])
        if not hmac.compare_digest(self._sign(payload).encode(), parts[3].encode()):
            return None
        try:
            expires = float(int(parts[2]))
        except ValueError:
            return None
        if expires <= now or parts[1] in self._revoked:
            return None
        return Session(parts[1], expires)

    def revoke(self, sid: str, expires: float, now: float) -> None:
        """Log a session out (on this node; the console relays it to the others)."""
        for old in [s for s, exp in self._revoked.items() if exp <= now]:
            del self._revoked[old]
        if expires > now:
            self._revoked[sid[:64]] = expires

    def csrf_token(self, session: Session) -> str:
        """The double-submit token for a session: derived, so nothing is stored."""
        return self._sign("csrf." + session.sid)

    def check_csrf(self, session: Session, candidate: str | None) -> bool:
        if not candidate or not candidate.isascii():
            return False
        return hmac.compare_digest(self.csrf_token(session).encode(), candidate.encode())

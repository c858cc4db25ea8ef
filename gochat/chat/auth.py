"""Optional client authentication: HS256 JWTs (pyjwt) carrying userId, name and rooms."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"


class AuthError(Exception):
    """A token that is missing, malformed, forged or expired."""


@dataclass(frozen=True)
class Identity:
    user_id: str
    name: str
    expires: float
    rooms: frozenset[str] | None


def verify(token: str | None, secret: str) -> Identity:
    """Check a client token; raise AuthError saying why it is refused."""
    if not token:
        raise AuthError("token required")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}"[:120]) from None
    sub, name, rooms = claims.get("sub"), claims.get("name", claims.get("sub")), claims.get("rooms")
    if not isinstance(sub, str) or not 1 <= len(sub) <= 64 or not sub.isprintable():
        raise AuthError("invalid token: sub must be a printable string of 1-64 characters")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 32 or not name.isprintable():
        raise AuthError("invalid token: name must be a printable string of 1-32 characters")
    if rooms is not None and not (
        isinstance(rooms, list) and all(isinstance(r, str) for r in rooms)
    ):
        raise AuthError("invalid token: rooms must be a list of room names")
    return Identity(
        sub, name.strip(), float(claims["exp"]), frozenset(rooms) if rooms is not None else None
    )


def mint(
    secret: str,
    user_id: str,
    name: str | None = None,
    ttl: float = 3600,
    rooms: list[str] | None = None,
) -> str:
    """A signed token for local use and tests (`gochat token`)."""
    claims: dict[str, object] = {
        "sub": user_id,
        "name": name or user_id,
        "exp": int(time.time() + ttl),
    }
    if rooms is not None:
        claims["rooms"] = rooms
    return jwt.encode(claims, secret, algorithm=ALGORITHM)

"""The exceptions of the client library: one base, and one class per way a call can fail."""

from __future__ import annotations


class GochatError(Exception):
    """Base of every error this library raises."""


class ConnectError(GochatError):
    """The connection could not be opened (refused, unreachable, or the upgrade answered
    `status`: 400 bad name, 401 bad token, 403 origin, 429/503 busy)."""

    def __init__(self, url: str, message: str, status: int | None = None) -> None:
        super().__init__(f"cannot connect to {url}: {message}")
        self.url = url
        self.status = status


class Refused(GochatError):
    """The server answered a request of ours with an `error` frame.

    `code` is the contract's error code (`too_long`, `not_in_room`, `rate_limited`,
    `unavailable`, `bad_room`, `unauthorized`, ...); `ref` is what the server said it refers
    to (the chat's `cid`, or `join` / `leave`).
    """

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.ref = ref


class ConnectionClosed(GochatError):
    """The client is closed for good: by `close()`, or by the server with a close code the
    library does not reconnect after (`code`, `reason`: 1008 policy, 4001 kicked, ...)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed ({code}): {reason}" if reason else f"closed ({code})")
        self.code = code
        self.reason = reason

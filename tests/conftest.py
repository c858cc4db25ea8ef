"""Fixtures: a real gochat app behind a real socket, configured per test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gochat.app import create_app
from gochat.config import Settings

from .redis_server import RedisServer

MakeChat = Callable[..., Awaitable[TestClient[Any, Any]]]


def make_settings(**overrides: Any) -> Settings:
    """Test settings: a fixed node id, no rate limit unless asked, short grace."""
    values: dict[str, Any] = {"node_id": "test-node", "rate": 0, "shutdown_grace": 2}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_chat(aiohttp_client: Any) -> MakeChat:
    """`await make_chat(**settings)`: a TestClient on a fresh app with those settings."""

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings(**overrides)))
        return client

    return make


@pytest.fixture
async def chat(make_chat: MakeChat) -> TestClient[Any, Any]:
    """A TestClient on an app with default test settings."""
    return await make_chat()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server of this test's own on a free port; killed at teardown.

    Request it before `make_chat`, so the apps leave before their Redis goes away.
    """
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()

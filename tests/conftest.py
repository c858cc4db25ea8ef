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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module marked `both_fast_paths` runs each of its app tests twice: with the shortcuts
    through aiohttp's insides (the default) and with public aiohttp API only."""
    if metafunc.definition.get_closest_marker("both_fast_paths") and (
        "fast_paths" in metafunc.fixturenames
    ):
        metafunc.parametrize("fast_paths", [True, False], ids=["fast", "public"], indirect=True)


@pytest.fixture
def fast_paths(request: pytest.FixtureRequest) -> bool:
    """GOCHAT_FAST_PATHS for the apps `make_chat` builds (on unless parametrized)."""
    return bool(getattr(request, "param", True))


@pytest.fixture
def make_chat(aiohttp_client: Any, fast_paths: bool) -> MakeChat:
    """`await make_chat(**settings)`: a TestClient on a fresh app with those settings."""

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        settings = make_settings(**{"fast_paths": fast_paths, **overrides})
        client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
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

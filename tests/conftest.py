"""Fixtures: a real gochat app behind a real socket, configured per test; a redis-server or
a Chromium of the test's own; and the check that such tests carry their marker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser

from gochat.app import create_app

from .browser import chromium
from .redis_cluster import RedisCluster
from .redis_server import RedisServer
from .util import make_settings

MakeChat = Callable[..., Awaitable[TestClient[Any, Any]]]

# A test that uses one of these fixtures (directly or through another fixture) must carry the
# marker: `-m "not redis"` / `-m "not browser"` then leaves out exactly the tests that need a
# redis-server or Chromium. The markers are written out in the test modules, where a reader
# sees them; collection fails when one is missing (rather than adding it silently, which would
# make a marker in the source a mere comment that may or may not agree with the run).
MARKED_FIXTURES = {
    "redis": {"redis_server", "debug_redis", "redis_cluster", "own_redis_cluster", "any_redis"},
    "browser": {"browser"},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [
        f"{item.nodeid}: uses {', '.join(sorted(uses))} but is not marked `{marker}`"
        for item in items
        for marker, fixtures in MARKED_FIXTURES.items()
        if (uses := fixtures & set(getattr(item, "fixturenames", ())))
        and item.get_closest_marker(marker) is None
    ]
    if missing:
        raise pytest.UsageError(
            "tests without their marker (add `pytestmark = pytest.mark.<marker>` to the module "
            "or `@pytest.mark.<marker>` to the test):\n  " + "\n  ".join(missing)
        )


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
    yield from _running(RedisServer())


@pytest.fixture
def debug_redis() -> Iterator[RedisServer]:
    """Like `redis_server`, but one that accepts DEBUG (Redis 7 refuses it by default)."""
    yield from _running(RedisServer(extra=("--enable-debug-command", "yes")))


@pytest.fixture(scope="session")
def _shared_cluster() -> Iterator[RedisCluster]:
    """One Redis Cluster for the whole run (started by the first test that needs it): six
    processes and a `--cluster create` cost about a second, too much per test."""
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster(_shared_cluster: RedisCluster) -> RedisCluster:
    """The shared Redis Cluster, emptied for this test. Not to be killed: a test that kills
    a node takes `own_redis_cluster`."""
    _shared_cluster.wait_ok()
    _shared_cluster.flush()
    return _shared_cluster


@pytest.fixture
def own_redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of this test's own, which it may SIGKILL nodes of."""
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def any_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer | RedisCluster]:
    """A single redis-server, then the shared Redis Cluster: the test runs on both."""
    if request.param == "single":
        yield from _running(RedisServer())
    else:
        yield request.getfixturevalue("redis_cluster")


def _running(server: RedisServer) -> Iterator[RedisServer]:
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium (tests/browser.py), closed at teardown."""
    async with chromium() as chrome:
        yield chrome

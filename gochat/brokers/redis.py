"""The Redis broker (being written; see issue 3)."""

from __future__ import annotations

from ..config import Settings
from .memory import MemoryBroker


class RedisBroker(MemoryBroker):
    """Placeholder until the Redis broker lands: refuses to start."""

    kind = "redis"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.node_id, settings.history)

    async def start(self) -> None:
        raise RuntimeError("the Redis broker is not implemented yet")

"""Brokers: chosen by REDIS_URL (unset: in memory)."""

from __future__ import annotations

from ..config import Settings
from .base import Broker, BrokerUnavailable
from .memory import MemoryBroker

__all__ = ["Broker", "BrokerUnavailable", "MemoryBroker", "create_broker"]


def create_broker(settings: Settings) -> Broker:
    """The broker REDIS_URL asks for: Redis when set, else in memory."""
    if settings.redis_url:
        from .redis import RedisBroker

        return RedisBroker(settings)
    return MemoryBroker(
        settings.node_id,
        settings.history,
        settings.key_prefix,
        history_budget=settings.history_budget * 1024 * 1024,
    )

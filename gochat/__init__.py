"""gochat: a real-time chat server (aiohttp WebSockets, in memory or through Redis)."""

__version__ = "0.1.0"

"""The server HTTP API under /api, for integrations: post to rooms, read rooms, members and
history, and the console's kick and notice for machines (docs/api.md).

It may load the chat and the brokers, never the console: app.py hands it the console's
actions (tests/test_layout.py keeps it so).
"""

from __future__ import annotations

from .views import add_api

__all__ = ["add_api"]

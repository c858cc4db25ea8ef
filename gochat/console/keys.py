"""The console's typed keys of the application's state."""

from __future__ import annotations

from aiohttp import web

from .metrics import Metrics
from .state import Console

CONSOLE = web.AppKey("console", Console)
METRICS = web.AppKey("metrics", Metrics)

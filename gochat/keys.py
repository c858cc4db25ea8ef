"""Every typed key of the application's state (no string keys, no module globals)."""

from __future__ import annotations

from aiohttp import web

from .aiohttp_internals import FastPaths
from .brokers.base import Broker
from .config import Settings
from .console import Console
from .events import EventTap
from .firstframe import FirstFrameWatch
from .hub import Hub
from .metrics import Metrics

SETTINGS = web.AppKey("settings", Settings)
BROKER = web.AppKey("broker", Broker)
TAP = web.AppKey("tap", EventTap)
HUB = web.AppKey("hub", Hub)
CONSOLE = web.AppKey("console", Console)
METRICS = web.AppKey("metrics", Metrics)
FAST_PATHS = web.AppKey("fast_paths", FastPaths)
FIRST_FRAME = web.AppKey("first_frame", FirstFrameWatch)  # absent when the timeout is off

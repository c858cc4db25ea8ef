"""The typed keys of the application's shared state (no string keys, no module globals).

The console's own keys are in console/keys.py, so that loading the chat never loads it.
"""

from __future__ import annotations

from aiohttp import web

from .aiohttp_internals import FastPaths
from .brokers.base import Broker
from .chat.firstframe import FirstFrameWatch
from .chat.hub import Hub
from .config import Settings
from .events import EventTap

SETTINGS = web.AppKey("settings", Settings)
BROKER = web.AppKey("broker", Broker)
TAP = web.AppKey("tap", EventTap)
HUB = web.AppKey("hub", Hub)
FAST_PATHS = web.AppKey("fast_paths", FastPaths)
FIRST_FRAME = web.AppKey("first_frame", FirstFrameWatch)  # absent when the timeout is off

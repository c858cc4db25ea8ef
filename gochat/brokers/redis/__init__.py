"""The Redis broker: many nodes behind a load balancer act as one chat server.

Routing, not broadcasting: one subscriber connection per node, subscribed to a room's
channel only while the node has members there. Chat messages get their id and their place
in the room's order from one Lua call (XADD + PUBLISH). Presence is counted per connection
in Redis and its transitions are published by the script that changes the count, so each
`online`/`offline` goes out once for the whole cluster. Each node keeps a heartbeat key;
every node reaps the members of nodes whose heartbeat expired.

While Redis cannot be reached, requests are refused with BrokerUnavailable (the client
gets `error` `unavailable` and may retry) rather than queued: a queue would tell the client
its message is on its way while this node might die holding it. See docs/scaling.md.

The parts, one job each: broker.py (the facade, RedisBroker), subscriber.py, publisher.py,
presence.py, events.py, history.py, connection.py and scripts.py (the Lua).
"""

from __future__ import annotations

from . import subscriber
from .broker import RedisBroker

__all__ = ["RedisBroker", "subscriber"]

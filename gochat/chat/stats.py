"""The chat's counters on this node: the Hub writes them, /metrics and the console read them.

Every field is exported by console/metrics.py; a counter nobody reads does not belong here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class ChatStats:
    """Totals since the node started (a connection's own counts live on its Client until it
    closes, then move into `messages_in_closed`)."""

    connections: int = 0  # connections accepted
    messages_in_closed: int = 0  # frames received from connections that have closed
    inline: int = 0  # chat frames handled in aiohttp's data callback (aiohttp_internals)
    published: int = 0  # chat messages of local clients that the broker published
    repeated: int = 0  # chat messages not published again: their cid was (sent once)
    delivered: int = 0  # room messages (chat and presence) handed to local members
    bad_envelopes: int = 0  # malformed broker messages dropped before any client
    slow_consumer_closes: int = 0  # 1013: unsent bytes over GOCHAT_SEND_BUFFER
    write_timeout_closes: int = 0  # 1013: a backlog that did not drain in time
    resync_closes: int = 0  # 1013: messages missed beyond the room's history
    heartbeat_aborts: int = 0  # connections aborted for answering no ping
    broker_ups: int = 0  # times the broker became usable (the first start included)
    errors: Counter[str] = field(default_factory=Counter)  # error frames sent, by code

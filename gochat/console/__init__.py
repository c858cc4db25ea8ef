"""The operations console at /admin and /metrics: views, per-node state, auth, metrics.

Reads the chat (the Hub) and the broker; nothing in the chat or the brokers imports it.
"""

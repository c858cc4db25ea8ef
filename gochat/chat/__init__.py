"""The chat: the /ws handler, the Hub and its connections, and how frames reach them.

Imports the brokers' contract and the shared modules (protocol, config, events), never the
console (tests/test_layout.py).
"""

"""HTTP/1.1 transport for the gateway: a thin trio + httptools server and a small webhook client.

This package owns bytes-on-the-wire framing only; it must never contain routing, auth or business logic.
"""

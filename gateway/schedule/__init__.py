"""Outbound scheduling: token-bucket rate limits (native or pure twin) and the fair,
priority-aware message scheduler.

This package owns *when* a queued message may be sent; it must never perform I/O, read a clock,
or decide *how* a message is delivered.
"""

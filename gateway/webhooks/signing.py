"""Webhook signatures: `X-Gateway-Signature: sha256=<hex HMAC-SHA256(secret, "<ts>.<body>")>`
with the Unix-seconds timestamp in `X-Gateway-Timestamp`.

Receivers should recompute the HMAC over the raw body, compare in constant time and refuse
timestamps outside their tolerance (replay protection). Secrets are never logged.
"""
from __future__ import annotations

import hashlib
import hmac


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, now: float,
           tolerance_s: float = 300.0) -> bool:
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def signed_headers(secret: bytes, timestamp: int, body: bytes, delivery_id: str) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "application/json"),
        ("User-Agent", "gateway-webhooks/1"),
        ("X-Gateway-Delivery", delivery_id),
        ("X-Gateway-Timestamp", str(timestamp)),
        ("X-Gateway-Signature", sign(secret, timestamp, body)),
    ]

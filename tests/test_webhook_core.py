"""Webhook signing and the retry policy, without sockets."""
import random

from gateway.webhooks import policy
from gateway.webhooks.signing import sign, signed_headers, verify

SECRET = b"test-secret-0123456789abcdef"


def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    import hashlib
    import hmac

    body = b'{"events":[]}'
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == "sha256=" + expected


def test_verify_accepts_fresh_and_refuses_tampered_or_stale():
    body = b'{"a":1}'
    sig = sign(SECRET, 1000, body)
    assert verify(SECRET, "1000", body, sig, now=1100)
    assert not verify(SECRET, "1000", body + b" ", sig, now=1100)
    assert not verify(SECRET, "1000", body, sig, now=2000)
    assert not verify(b"other-secret-0123456789", "1000", body, sig, now=1100)


def test_headers_carry_timestamp_and_signature():
    headers = dict(signed_headers(SECRET, 42, b"x", "d1"))
    assert headers["X-Gateway-Timestamp"] == "42"
    assert headers["X-Gateway-Signature"] == sign(SECRET, 42, b"x")


def test_retry_on_5xx_timeouts_429_and_408_done_on_2xx_dead_on_other_4xx():
    assert [policy.classify(s) for s in (None, 500, 503, 429, 408)] == [policy.RETRY] * 5
    assert [policy.classify(s) for s in (200, 204)] == [policy.DONE] * 2
    assert [policy.classify(s) for s in (400, 404, 410)] == [policy.DEAD] * 3


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    rng = random.Random(1)
    delays = [policy.backoff_s(a, 1.0, 60.0, rng) for a in range(1, 10)]
    for attempt, d in zip(range(1, 10), delays):
        full = min(60.0, 2 ** (attempt - 1))
        assert full / 2 <= d <= full


def test_retry_after_is_respected():
    assert policy.backoff_s(1, 1.0, 60.0, random.Random(1), retry_after_s=30) == 30

"""Bodies mutated at random (seeded, so a failure repeats) against a real gateway process: every
answer is a stable 4xx error or a success, never a 500, and the process stays up with nothing
unexpected in its log."""
import json
import random

import pytest

from tests.harness import Gateway

pytestmark = pytest.mark.e2e

# JSON's punctuation and the bytes that break UTF-8, besides random ones: what a mutation writes
ALPHABET = b'{}[]",:0123456789eE.-+\\u tnulrfas\xff\xc3\xe9\x00\x80'
BODIES = [
    ("POST", "/v1/messages", {"to": "+14155550100", "type": "text", "text": {"body": "hello"},
                              "priority": "bulk", "client_ref": "r-1"}),
    ("POST", "/v1/messages/batch", {"messages": [{"to": "+14155550101", "text": {"body": "a"}},
                                                 {"to": "+14155550102", "text": {"body": "b"}}]}),
    ("PATCH", "/admin/v1/senders/+15550000002", {"rate_per_minute": 30, "burst": 5}),
    ("PUT", "/admin/v1/sensitive-words/fuzz", {"action": "flag", "terms": ["zzyzx", {"text": "qwv", "whole_word": True}]}),
    ("POST", "/admin/v1/reviews/01ARZ3NDEKTSV4RRFFQ69G5FAV/reject", {"reason": "spam"}),
]


def mutate(rnd: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rnd.randint(1, 4)):
        pos = rnd.randrange(len(data))
        choice = rnd.random()
        if choice < 0.45:
            data[pos] = rnd.choice(ALPHABET) if rnd.random() < 0.8 else rnd.randrange(256)
        elif choice < 0.7:
            del data[pos:pos + rnd.randint(1, 3)]
        elif choice < 0.9:
            data[pos:pos] = bytes([rnd.choice(ALPHABET)])
        else:
            data[pos:pos] = b"[" * rnd.randint(1, 3000)  # deep nesting, often past the recursion limit
    return bytes(data)


def test_mutated_bodies_get_4xx_or_success_never_500(tmp_path):
    gw = Gateway(tmp_path).start()
    rnd = random.Random(20261207)
    seen: dict[int, int] = {}
    try:
        for i in range(400):
            method, path, body = BODIES[i % len(BODIES)]
            sent = mutate(rnd, json.dumps(body).encode())
            status, reply = gw.request(method, path, sent)
            seen[status] = seen.get(status, 0) + 1
            assert status < 500 or status == 503, (method, path, sent[:200], status, reply)
            if status >= 400:
                assert isinstance(reply, dict) and reply["error"]["code"], (sent[:200], reply)
        assert gw.proc.poll() is None
        assert gw.request("GET", "/healthz", auth=False)[0] == 200
        assert "Traceback" not in gw.read_log()
        assert seen.get(400, 0) > 50 and seen.get(422, 0) > 10, seen  # the mutations did reach the decoders
    finally:
        gw.stop()

"""Plain sends that join one group of accepts count as callers of the writer's batch, so that the
idle writer's group-commit window is scored by the requests it lets share an fsync."""
import types

import trio

from gateway.http.server import Deferred, Request
from tests.inproc import with_gateway


def send(gw, n: int):
    body = b'{"from":"+15550000001","to":"+1415555%04d","text":{"body":"hi"}}' % n
    req = Request("POST", "/v1/messages", "", {}, body, True, "test", 0.0)
    return gw.messages.send(req, types.SimpleNamespace(workspace="default"), {})


async def test_each_plain_send_in_one_accept_group_is_a_caller_of_its_batch(tmp_path):
    async def body(gw, link):
        answers = [send(gw, n) for n in range(3)]  # no checkpoint between: one group, one op
        batch = gw.writer._batch
        assert len(batch.ops) == 1 and batch.eager_ops == 3
        with trio.fail_after(5):
            while any(a.response is None for a in answers):
                await trio.sleep(0.01)
        assert all(isinstance(a, Deferred) and a.response.status == 202 for a in answers)
        # committed, the group lets go of its batch: the batch holds the group's callback, and a
        # cycle of every accepted message's records waits for a full collection (~100 ms stalls)
        assert gw.messages._plain.batch is None

    await with_gateway(tmp_path, body)

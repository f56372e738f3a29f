"""Inbound messages through real processes: netsim's customers write to the gateway's senders
(new sessions from the published bundles, and answers within sessions the gateway started), the
gateway decrypts, stores and raises signed `message.received` webhooks; STOP and START go through
the policy; generated traffic at a rate, and a kill -9 in the middle of it, end with every
message delivered to the app exactly once."""
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time

import pytest
import trio

from loadtest.netsim.server import customer_send
from tests.harness import ROOT, Gateway, Netsim, WebhookReceiver

pytestmark = pytest.mark.e2e
SENDER = "+15550000001"
EVENTS = 'events = ["message.status", "policy.flagged", "message.received"]\n'


def inbound_gateway(tmp, netsim, hooks) -> Gateway:
    """A gateway whose endpoint takes message.received, for both workspaces (generated traffic
    writes to every sender, and +15550000009 belongs to the workspace "other")."""
    gw = Gateway(tmp, netsim=netsim, webhook_url=hooks.url)
    hook = f'url = "{hooks.url}"\n'
    block = gw.config_text[gw.config_text.index("[[workspaces.webhooks]]"):gw.config_text.index(hook) + len(hook)]
    secret = gw.config_text[gw.config_text.index(hook) + len(hook):].split("\n", 1)[0] + "\n"
    text = gw.config_text.replace(hook, hook + EVENTS)
    text = text.replace('name = "other"\n', 'name = "other"\n' + block + EVENTS + secret)
    gw.config_text = text
    gw.config_path.write_text(text)
    return gw


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inbound")
    record = tmp / "netsim-record.jsonl"
    netsim = Netsim("--seed", "11", "--latency-ms", "5", "--record", str(record), module="tests.netsim_text").start()
    hooks = WebhookReceiver().start()
    gw = inbound_gateway(tmp, netsim, hooks).start()
    gw.netsim, gw.hooks, gw.record = netsim, hooks, record
    wait_published(netsim)
    yield gw
    gw.stop()
    netsim.stop()
    hooks.stop()


def wait_published(netsim, timeout=15.0) -> None:
    deadline = time.monotonic() + timeout
    while netsim.stats()["keys_published"] < 3:
        assert time.monotonic() < deadline, "the gateway never published its senders' keys"
        time.sleep(0.1)


def say(gw, customer: str, text: str, to: str = SENDER) -> str:
    """The customer sends `text`; returns the network's id of the inbound message."""
    reply = trio.run(customer_send, "127.0.0.1", gw.netsim.port, customer, to, text)
    assert "id" in reply, reply
    return reply["id"]


def received(gw, network_id: str, kind: str = "message.received", timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in gw.hooks.events():
            if event["type"] == kind and event["data"].get("network_id") == network_id:
                return event
        time.sleep(0.05)
    raise AssertionError(f"no {kind} for {network_id}: {gw.hooks.events()[-5:]}")


def texts_to(gw, customer: str, timeout: float = 15.0, after: int = 0) -> list[str]:
    """Texts the customer's device decrypted from SENDER (netsim's record), waiting for more than `after`."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        if gw.record.exists():
            for line in gw.record.read_text().splitlines():
                entry = json.loads(line)
                if entry["recipient"] == customer and entry["sender"] == SENDER and "text" in entry:
                    found.append(entry["text"])
        if len(found) > after or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_customer_starts_a_session_and_the_app_gets_a_signed_message_received_webhook(env):
    network_id = say(env, "+18885550001", "Hello, is my order on its way?")
    event = received(env, network_id)
    data = event["data"]
    assert data["text"] == {"body": "Hello, is my order on its way?"} and data["type"] == "text"
    assert (data["from"], data["to"], data["workspace"]) == ("+18885550001", SENDER, "default")
    headers, body = next((h, b) for h, b in env.hooks.deliveries if network_id.encode() in b)
    signed = headers["X-Gateway-Timestamp"].encode() + b"." + body
    expected = "sha256=" + hmac.new(env.webhook_secret, signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Gateway-Signature"], expected)
    status, view = env.request("GET", f"/v1/messages/{data['message_id']}")
    assert status == 200 and view["direction"] == "inbound" and view["status"] == "received"
    assert (view["from"], view["to"], view["network_id"]) == ("+18885550001", SENDER, network_id)
    assert "received_at" in view and "text" not in view and "body" not in view


def test_later_messages_of_the_customers_session_arrive_in_order_of_sending(env):
    ids = [say(env, "+18885550002", f"message {i}") for i in range(5)]
    assert [received(env, i)["data"]["text"]["body"] for i in ids] == [f"message {i}" for i in range(5)]
    assert env.netsim.stats()["customer_sessions"] >= 1


def test_a_customer_replies_within_a_session_the_gateway_started(env):
    customer = "+18885550003"
    env.wait_status(env.send(customer, "Your parcel arrives tomorrow."), {"delivered", "read"})
    sessions_before = env.netsim.stats()["customer_sessions"]
    network_id = say(env, customer, "Great, thanks!")
    assert received(env, network_id)["data"]["text"]["body"] == "Great, thanks!"
    assert env.netsim.stats()["customer_sessions"] == sessions_before  # answered in the gateway's session
    env.wait_status(env.send(customer, "You're welcome."), {"delivered", "read"})
    assert texts_to(env, customer, after=1)[-1] == "You're welcome."


def test_stop_opts_the_customer_out_with_a_confirmation_and_start_opts_them_back_in(env):
    customer = "+18885550004"
    bulk = {"to": customer, "text": {"body": "Big sale today"}, "priority": "bulk"}
    received(env, say(env, customer, "STOP"))
    confirmation = texts_to(env, customer)
    assert confirmation and "unsubscribed" in confirmation[-1]
    status, reply = env.request("POST", "/v1/messages", bulk)
    assert status == 422 and reply["error"]["code"] == "recipient_opted_out"
    status, view = env.request("GET", f"/admin/v1/opt-outs/{SENDER}/{customer}")
    assert status == 200 and view["source"] == "keyword"
    received(env, say(env, customer, "start"))
    assert "subscribed again" in texts_to(env, customer, after=1)[-1]
    status, reply = env.request("POST", "/v1/messages", bulk)
    assert status == 202, reply


def test_inbound_text_is_scanned_and_flagged_never_blocked(env):
    status, _ = env.request("PUT", "/admin/v1/sensitive-words/threats",
                            {"action": "block", "terms": ["lawsuit"]})
    assert status in (200, 201)
    network_id = say(env, "+18885550005", "Expect a L4WSUIT from me")
    message = received(env, network_id)["data"]
    deadline = time.monotonic() + 15
    while True:
        flags = [e for e in env.hooks.events()
                 if e["type"] == "policy.flagged" and e["data"]["message_id"] == message["message_id"]]
        if flags or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    [flag] = flags
    assert flag["data"]["direction"] == "inbound" and flag["data"]["action"] == "flag"
    assert flag["data"]["hits"][0]["term"] == "lawsuit"


def test_inbound_text_is_in_no_file_under_the_data_directory(env):
    marker = "inbound-marker-5c1e0b7d"
    received(env, say(env, "+18885550006", f"secret {marker}"))
    time.sleep(0.5)  # the webhook outbox entry is deleted after the 2xx: check after both commits
    for folder, _, files in os.walk(env.data_dir):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                assert marker.encode() not in f.read(), os.path.join(folder, name)


def test_the_send_subcommand_reports_a_number_without_keys(env):
    out = subprocess.run([sys.executable, "-m", "loadtest.netsim", "send", "--connect",
                          f"127.0.0.1:{env.netsim.port}", "--from", "+18885550007", "--to", "+15557654321",
                          "--text", "hi"], cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert out.returncode == 1 and json.loads(out.stdout) == {"error": "not_published"}


# -- generated traffic ---------------------------------------------------------------------------

def exactly_once(hooks, expected: int, netsim, timeout: float) -> dict[str, str]:
    """Wait until `expected` distinct message.received events arrived and netsim holds nothing
    unacknowledged; returns network id -> message id, checking that no network id got two messages."""
    deadline = time.monotonic() + timeout
    while True:
        by_event = {e["id"]: e for e in hooks.events() if e["type"] in ("message.received", "message.undecryptable")}
        stats = netsim.stats()
        if len(by_event) >= expected and stats["inbound_unacked"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    failures = [e["data"]["reason"] for e in by_event.values() if e["type"] == "message.undecryptable"]
    assert failures == [], {reason: failures.count(reason) for reason in failures}
    messages: dict[str, str] = {}
    for e in by_event.values():
        net_id = e["data"]["network_id"]
        assert messages.setdefault(net_id, e["data"]["message_id"]) == e["data"]["message_id"], net_id
    assert len(messages) == expected == stats["inbound_sent"], (len(messages), expected, stats)
    assert stats["inbound_unacked"] == 0
    return messages


def test_inbound_traffic_at_a_rate_reaches_the_app_exactly_once(tmp_path):
    count = 600
    netsim = Netsim("--seed", "21", "--latency-ms", "5", "--inbound-rate", "200", "--inbound-count", str(count),
                    "--inbound-customers", "150").start()
    hooks = WebhookReceiver().start()
    gw = inbound_gateway(tmp_path, netsim, hooks).start()
    try:
        messages = exactly_once(hooks, count, netsim, timeout=90)
        bodies = sorted(int(e["data"]["text"]["body"].rsplit(" ", 1)[1]) for e in hooks.events()
                        if e["type"] == "message.received")
        assert sorted(set(bodies)) == list(range(count))
        assert len(messages) == count
    finally:
        gw.stop()
        netsim.stop()
        hooks.stop()


def test_a_kill_9_during_inbound_traffic_loses_nothing_and_duplicates_nothing(tmp_path):
    count = 800
    netsim = Netsim("--seed", "22", "--latency-ms", "5", "--inbound-rate", "200", "--inbound-count", str(count),
                    "--inbound-customers", "100").start()
    hooks = WebhookReceiver().start()
    gw = inbound_gateway(tmp_path, netsim, hooks).start()
    try:
        deadline = time.monotonic() + 30
        while len(hooks.events()) < 150:
            assert time.monotonic() < deadline, "no inbound traffic reached the app"
            time.sleep(0.05)
        gw.kill()
        time.sleep(0.5)  # customers keep writing while the gateway is down
        gw.start()
        exactly_once(hooks, count, netsim, timeout=120)
    finally:
        gw.stop()
        netsim.stop()
        hooks.stop()


def test_an_endpoint_that_takes_only_message_received_gets_those_and_nothing_else(tmp_path):
    """Found in review: an endpoint whose `events` did not name message.status got nothing at all
    (the dispatcher ran only message.status endpoints), silently."""
    netsim = Netsim("--seed", "12", "--latency-ms", "5").start()
    hooks = WebhookReceiver().start()
    gw = Gateway(tmp_path, netsim=netsim, webhook_url=hooks.url)
    hook = f'url = "{hooks.url}"\n'
    gw.config_text = gw.config_text.replace(hook, hook + 'events = ["message.received"]\n')
    gw.config_path.write_text(gw.config_text)
    gw.start()
    gw.netsim, gw.hooks = netsim, hooks
    try:
        wait_published(netsim)
        outbound = gw.send("+14155550123", "a status the endpoint does not take")
        gw.wait_status(outbound, {"delivered", "read"})
        network_id = say(gw, "+18885550031", "only this one")
        assert received(gw, network_id)["data"]["text"] == {"body": "only this one"}
        assert {e["type"] for e in hooks.events()} == {"message.received"}
    finally:
        gw.stop()
        netsim.stop()
        hooks.stop()

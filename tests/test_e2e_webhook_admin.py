"""Webhook endpoints through a real gateway process: what each one has waiting, its dead letters
(events an endpoint refused for good), and sending them again once the endpoint is fixed."""
import pytest

from tests.harness import Gateway, WebhookReceiver, wait_for

pytestmark = pytest.mark.e2e


def test_dead_letters_are_listed_without_bodies_and_sent_again_once_the_endpoint_takes_them(tmp_path):
    receiver = WebhookReceiver(fail_first=10**6, fail_status=400).start()  # a final refusal: no retry
    gw = Gateway(tmp_path, webhook_url=receiver.url, sim="read_share = 0.0\nlatency_ms_median = 5.0").start()
    try:
        msg_id = gw.send("+14155550100", "a text that no listing shows", client_ref="c-1")
        gw.wait_status(msg_id, {"delivered"})
        wait_for(lambda: gw.metric("gateway_webhook_dead_letters") >= 2)  # sent, delivered
        status, reply = gw.request("GET", "/admin/v1/webhooks")
        assert status == 200
        [endpoint] = reply["endpoints"]
        assert endpoint["origin"] == receiver.url.rsplit("/", 1)[0] and "hooks" not in str(reply)
        assert endpoint["dead_letters"] >= 2 and endpoint["queued"] == 0
        status, reply = gw.request("GET", "/admin/v1/webhooks/dead-letters?limit=100")
        assert status == 200
        dead = reply["dead_letters"]
        assert {d["message_id"] for d in dead} == {msg_id}
        assert all(d["type"] == "message.status" and d["last_error"] == "http 400" and d["attempts"] == 1
                   and d["endpoint"] == endpoint["id"] for d in dead)
        assert "a text that no listing shows" not in str(reply) and "c-1" not in str(reply)
        assert reply["next"] is None  # all on one page
        status, page = gw.request("GET", "/admin/v1/webhooks/dead-letters?limit=1")
        assert [d["event_id"] for d in page["dead_letters"]] == [dead[0]["event_id"]]
        assert page["next"] == f"{endpoint['id']}.{dead[0]['event_id']}"
        status, page = gw.request("GET", f"/admin/v1/webhooks/dead-letters?limit=100&after={page['next']}")
        assert [d["event_id"] for d in page["dead_letters"]] == [d["event_id"] for d in dead[1:]]
        assert page["next"] is None
        for bad in (dead[0]["event_id"], f"zz.{dead[0]['event_id']}", f"{endpoint['id']}.nope"):
            status, reply = gw.request("GET", f"/admin/v1/webhooks/dead-letters?after={bad}")
            assert (status, reply["error"]["code"]) == (422, "invalid_field")

        with receiver.lock:
            receiver.fail_first = 0  # the endpoint is fixed
        first = dead[0]["event_id"]
        status, reply = gw.request("POST", "/admin/v1/webhooks/dead-letters/replay", {"event_ids": [first]})
        assert (status, reply["replayed"], reply["dead_letters_left"]) == (200, 1, len(dead) - 1)
        wait_for(lambda: [e for e in receiver.events() if e["id"] == first])
        wait_for(lambda: gw.metric("gateway_webhook_outbox_depth") == 0)  # its 2xx is stored: not sent again
        gw.stop()  # after a restart the outbox scan starts over: what is replayed then comes through it
        gw.start()
        status, reply = gw.request("POST", "/admin/v1/webhooks/dead-letters/replay",
                                   {"endpoint": endpoint["id"]})
        assert (status, reply["replayed"], reply["dead_letters_left"]) == (200, len(dead) - 1, 0)
        wait_for(lambda: {e["id"] for e in receiver.events()} >= {d["event_id"] for d in dead})
        assert sorted(e["data"]["status"] for e in receiver.events()) == ["delivered", "sent"]  # each once
        wait_for(lambda: gw.metric("gateway_webhook_outbox_depth") == 0)
        assert gw.metric("gateway_webhook_dead_letters") == 0
        status, log = gw.request("GET", "/admin/v1/audit")
        replays = [e for e in log["entries"] if e["action"] == "webhook.replay"]
        assert sorted(e["detail"]["replayed"] for e in replays) == sorted([1, len(dead) - 1])
        status, reply = gw.request("POST", "/admin/v1/webhooks/dead-letters/replay", {})
        assert (status, reply["replayed"]) == (200, 0)
    finally:
        gw.stop()
        receiver.stop()


def test_an_event_id_replays_the_event_at_every_endpoint_it_died_at(tmp_path):
    first = WebhookReceiver(fail_first=10**6, fail_status=410).start()
    second = WebhookReceiver(fail_first=10**6, fail_status=410).start()
    gw = Gateway(tmp_path, webhook_url=first.url, sim="read_share = 0.0\nlatency_ms_median = 5.0")
    secret = tmp_path / "hook.secret"
    gw.config_text = gw.config_text.replace(
        f'url = "{first.url}"', f'url = "{first.url}"\nsecret_file = "{secret}"\n'
        f'[[workspaces.webhooks]]\nurl = "{second.url}"', 1)
    gw.config_path.write_text(gw.config_text)
    gw.start()
    try:
        assert len(gw.request("GET", "/admin/v1/webhooks")[1]["endpoints"]) == 2
        gw.wait_status(gw.send("+14155550100"), {"delivered"})
        dead = wait_for(lambda: (d := gw.request("GET", "/admin/v1/webhooks/dead-letters")[1]["dead_letters"])
                    and len(d) >= 4 and d)
        for receiver in (first, second):
            with receiver.lock:
                receiver.fail_first = 0
        paged, after = [], ""  # page by page, one a page, across both endpoints
        while True:
            page = gw.request("GET", f"/admin/v1/webhooks/dead-letters?limit=1{after}")[1]
            paged += page["dead_letters"]
            if page["next"] is None:
                break
            after = f"&after={page['next']}"
        assert [(d["endpoint"], d["event_id"]) for d in paged] == [(d["endpoint"], d["event_id"]) for d in dead]
        assert len({d["endpoint"] for d in paged}) == 2
        event_id = dead[0]["event_id"]
        assert [d["event_id"] for d in dead].count(event_id) == 2
        status, reply = gw.request("POST", "/admin/v1/webhooks/dead-letters/replay", {"event_ids": [event_id]})
        assert (status, reply["replayed"]) == (200, 2)
        for receiver in (first, second):
            wait_for(lambda: [e for e in receiver.events() if e["id"] == event_id])
    finally:
        gw.stop()
        first.stop()
        second.stop()


def test_replay_and_listing_refuse_what_names_no_endpoint_of_the_workspace(tmp_path):
    receiver = WebhookReceiver().start()
    gw = Gateway(tmp_path, webhook_url=receiver.url).start()
    try:
        replay = "/admin/v1/webhooks/dead-letters/replay"
        for body, code in (({"endpoint": "zz"}, "invalid_field"), ({"event_ids": ["nope"]}, "invalid_field"),
                           ({"limit": 0}, "invalid_field"), ({"what": 1}, "invalid_field"),
                           ({"event_ids": ["01M98K0YXF20ZQ5RBK32QQ3SF2\n"]}, "invalid_field"),
                           ({"endpoint": "0123456789abcdef\n"}, "invalid_field")):
            status, reply = gw.request("POST", replay, body)
            assert (status, reply["error"]["code"]) == (422, code), (body, reply)
        status, reply = gw.request("POST", replay, {"endpoint": "0123456789abcdef"})
        assert (status, reply["error"]["code"]) == (404, "endpoint_not_found")
        status, reply = gw.request("GET", "/admin/v1/webhooks/dead-letters?endpoint=../x")
        assert (status, reply["error"]["code"]) == (422, "invalid_field")
        status, reply = gw.request("GET", "/admin/v1/webhooks?workspace=other")
        assert status == 200 and reply["endpoints"] == []
        app = gw.request("POST", "/admin/v1/api-keys", {"workspace": "default", "role": "app"})[1]["key"]
        assert gw.request("POST", replay, {}, key=app)[0] == 403
        assert gw.request("GET", "/admin/v1/webhooks", key=app)[0] == 403
    finally:
        gw.stop()
        receiver.stop()

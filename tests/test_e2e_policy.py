"""The outbound policy through real processes (gateway, netsim in its own process, a webhook
receiver): sensitive-word lists from files and the admin API, each action on the wire, held
messages across a restart, and opt-outs."""
import hashlib
import hmac
import json
import time

import pytest

from tests.harness import Gateway, Netsim, WebhookReceiver

pytestmark = pytest.mark.e2e
SENDER = "+15550000001"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    words = tmp / "sensitive-words"  # next to the harness's gateway.toml: read at start and on reload
    words.mkdir()
    (words / "spam.toml").write_text('action = "flag"\nterms = ["free"]\n')
    record = tmp / "netsim-record.jsonl"
    netsim = Netsim("--seed", "3", "--latency-ms", "5", "--record", str(record), module="tests.netsim_text").start()
    hooks = WebhookReceiver().start()
    gw = Gateway(tmp, netsim=netsim, webhook_url=hooks.url).start()
    gw.record, gw.words, gw.hooks = record, words, hooks
    yield gw
    gw.stop()
    netsim.stop()
    hooks.stop()


def put_list(gw, category, action, terms, **options):
    status, reply = gw.request("PUT", f"/admin/v1/sensitive-words/{category}",
                               {"action": action, "terms": terms, **options})
    assert status in (200, 201), reply
    return reply


def received_text(gw, msg_id, timeout=15.0) -> str:
    """The text the recipient's device decrypted, from netsim's record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.record.exists():
            for line in gw.record.read_text().splitlines():
                entry = json.loads(line)
                if entry["id"] == msg_id:
                    return entry["text"]
        time.sleep(0.05)
    raise AssertionError(f"netsim never received {msg_id}")


def events_of(gw, kind, timeout=15.0, **match):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in gw.hooks.events()
                 if e["type"] == kind and all(e["data"].get(k) == v for k, v in match.items())]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {kind} webhook with {match}: {gw.hooks.events()}")


def test_a_list_put_through_the_api_blocks_the_next_send_with_spans(env):
    put_list(env, "fraud", "block", ["send your pin"])
    text = "Please s e n d  your P1N 🙏"
    status, reply = env.request("POST", "/v1/messages", {"to": "+14155550100", "text": {"body": text}})
    assert status == 422 and reply["error"]["code"] == "sensitive_content"
    [hit] = reply["error"]["details"]["hits"]
    assert (hit["term"], hit["category"], hit["action"]) == ("send your pin", "fraud", "block")
    assert text[hit["start"]:hit["end"]] == hit["matched"] == "s e n d  your P1N"


def test_deleting_an_api_list_lets_the_next_send_through(env):
    put_list(env, "tmp-block", "block", ["zanzibar"])
    status, _ = env.request("POST", "/v1/messages", {"to": "+14155550100", "text": {"body": "zanzibar"}})
    assert status == 422
    status, _ = env.request("DELETE", "/admin/v1/sensitive-words/tmp-block")
    assert status == 204
    assert env.send("+14155550100", "zanzibar")


def test_mask_sends_the_masked_text_to_the_recipient(env):
    put_list(env, "abuse", "mask", ["idiot"])
    status, reply = env.request("POST", "/v1/messages", {"to": "+14155550110", "text": {"body": "you 1d1ot 🙄!"}})
    assert status == 202 and reply["policy"]["action"] == "mask"
    assert received_text(env, reply["id"]) == "you ***** 🙄!"


def test_flag_sends_unchanged_and_raises_a_signed_policy_webhook(env):
    text = "a ｆｒｅｅ upgrade"  # the file list (spam.toml)
    status, reply = env.request("POST", "/v1/messages", {"to": "+14155550120", "text": {"body": text},
                                                         "client_ref": "promo-7"})
    assert status == 202 and reply["status"] == "accepted" and reply["policy"]["action"] == "flag"
    assert received_text(env, reply["id"]) == text
    [event] = events_of(env, "policy.flagged", message_id=reply["id"])
    assert event["data"]["client_ref"] == "promo-7"
    assert event["data"]["hits"] == [{"term": "free", "category": "spam", "start": 2, "end": 6}]
    headers, body = next((h, b) for h, b in env.hooks.deliveries if reply["id"].encode() in b)
    signed = headers["X-Gateway-Timestamp"].encode() + b"." + body
    expected = "sha256=" + hmac.new(env.webhook_secret, signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Gateway-Signature"], expected)


def test_review_holds_across_a_restart_and_approval_delivers(env):
    put_list(env, "investment", "review", ["guaranteed returns"])
    status, reply = env.request("POST", "/v1/messages", {"to": "+14155550130",
                                                         "text": {"body": "Guaranteed returns, 9%"}})
    assert status == 202 and reply["status"] == "held"
    msg_id = reply["id"]
    env.kill()
    env.start()
    status, listing = env.request("GET", "/admin/v1/reviews")
    [held] = [r for r in listing["reviews"] if r["id"] == msg_id]
    assert held["text"] == "Guaranteed returns, 9%" and held["hits"][0]["category"] == "investment"
    assert env.request("GET", f"/v1/messages/{msg_id}")[1]["status"] == "held"
    status, _ = env.request("POST", f"/admin/v1/reviews/{msg_id}/approve")
    assert status == 200
    env.wait_status(msg_id, {"delivered", "read"})
    assert received_text(env, msg_id) == "Guaranteed returns, 9%"
    assert env.request("POST", f"/admin/v1/reviews/{msg_id}/approve")[0] == 404  # decided once


def test_held_messages_are_listed_page_by_page(env):
    put_list(env, "investment", "review", ["guaranteed returns"])
    items = [{"to": f"+1415555016{i}", "text": {"body": f"guaranteed returns {i}"}} for i in range(5)]
    status, reply = env.request("POST", "/v1/messages/batch", {"messages": items})
    assert status == 202 and reply["held"] == 5
    mine = [r["id"] for r in reply["results"]]
    listed, after, pages = [], None, 0
    while True:
        status, page = env.request("GET", "/admin/v1/reviews?limit=2" + (f"&after={after}" if after else ""))
        assert status == 200 and len(page["reviews"]) <= 2
        listed += [r["id"] for r in page["reviews"]]
        pages += 1
        after = page["next"]
        if after is None:
            break
        assert after == listed[-1]
    assert listed == sorted(listed) and len(set(listed)) == len(listed) and pages >= 3
    assert [i for i in listed if i in mine] == sorted(mine)
    for bad in ("x", mine[0] + "%0A", "../"):
        status, reply = env.request("GET", f"/admin/v1/reviews?after={bad}")
        assert status == 422 and reply["error"]["details"]["path"] == "after"
    assert env.request("GET", "/admin/v1/reviews?limit=1001")[0] == 422
    for msg_id in mine:
        assert env.request("POST", f"/admin/v1/reviews/{msg_id}/reject")[0] == 200


def test_rejection_fails_the_message_with_the_reason_and_a_status_webhook(env):
    put_list(env, "investment", "review", ["guaranteed returns"])
    msg_id = env.request("POST", "/v1/messages", {"to": "+14155550131",
                                                  "text": {"body": "guaranteed returns"}})[1]["id"]
    status, reply = env.request("POST", f"/admin/v1/reviews/{msg_id}/reject", {"reason": "misleading claim"})
    assert status == 200 and reply["status"] == "failed"
    view = env.wait_status(msg_id, {"failed"})
    assert view["reason"] == "misleading claim"
    events_of(env, "message.status", message_id=msg_id, status="failed", reason="misleading claim")


def test_a_held_message_to_a_contact_who_opted_out_meanwhile_cannot_be_approved(env):
    put_list(env, "investment", "review", ["guaranteed returns"])
    contact = "+14155550132"
    msg_id = env.request("POST", "/v1/messages", {"to": contact, "text": {"body": "guaranteed returns"}})[1]["id"]
    assert env.request("PUT", f"/admin/v1/opt-outs/{SENDER}/{contact}")[0] in (200, 201)
    status, reply = env.request("POST", f"/admin/v1/reviews/{msg_id}/approve")
    assert (status, reply["error"]["code"]) == (422, "recipient_opted_out")
    assert env.request("GET", f"/v1/messages/{msg_id}")[1]["status"] == "held"
    assert env.request("POST", f"/admin/v1/reviews/{msg_id}/reject", {"reason": "opted out"})[0] == 200


def test_a_batch_gives_each_item_its_own_verdict(env):
    put_list(env, "fraud", "block", ["send your pin"])
    put_list(env, "abuse", "mask", ["idiot"])
    put_list(env, "investment", "review", ["guaranteed returns"])
    items = [{"to": "+14155550140", "text": {"body": body}}
             for body in ("send your pin", "hi idiot", "guaranteed returns", "hello", "free gift")]
    status, reply = env.request("POST", "/v1/messages/batch", {"messages": items})
    assert status == 202 and (reply["accepted"], reply["held"], reply["rejected"]) == (3, 1, 1)
    results = reply["results"]
    assert results[0]["error"]["code"] == "sensitive_content"
    assert results[0]["error"]["details"]["path"] == "$.messages[0].text.body"
    assert results[1]["policy"]["action"] == "mask" and results[2]["status"] == "held"
    assert "policy" not in results[3] and results[4]["policy"]["action"] == "flag"
    assert received_text(env, results[1]["id"]) == "hi *****"
    assert received_text(env, results[3]["id"]) == "hello"


def test_reload_applies_a_changed_word_file(env):
    (env.words / "spam.toml").write_text('action = "flag"\nterms = ["free", "bonanza"]\n')
    status, reply = env.request("POST", "/admin/v1/config/reload")
    assert status == 200 and "sensitive_words" in reply["changes"]
    status, reply = env.request("POST", "/v1/messages", {"to": "+14155550150", "text": {"body": "Bonanza!"}})
    assert status == 202 and reply["policy"]["hits"][0]["term"] == "bonanza"
    lists = {entry["category"]: entry for entry in env.request("GET", "/admin/v1/sensitive-words")[1]["lists"]}
    assert lists["spam"]["source"] == "file" and lists["fraud"]["source"] == "api"
    assert lists["spam"]["term_count"] == 2 and "terms" not in lists["spam"]  # the terms: GET the category
    assert env.request("GET", "/admin/v1/sensitive-words/spam")[1]["terms"] == ["free", "bonanza"]


def test_a_bad_word_file_refuses_the_reload_and_the_old_lists_stay(env):
    (env.words / "broken.toml").write_text('action = "explode"\nterms = ["x"]\n')
    try:
        status, reply = env.request("POST", "/admin/v1/config/reload")
        assert status == 422 and reply["error"]["details"]["file"].endswith("broken.toml")
    finally:
        (env.words / "broken.toml").unlink()
    assert env.request("POST", "/v1/messages", {"to": "+14155550151", "text": {"body": "free"}})[0] == 202


def test_opted_out_contact_is_refused_marketing_but_gets_urgent_messages(env):
    contact = "+14155550160"
    status, _ = env.request("PUT", f"/admin/v1/opt-outs/{SENDER}/{contact}")
    assert status == 200
    status, reply = env.request("POST", "/v1/messages", {"to": contact, "text": {"body": "sale!"}, "priority": "bulk"})
    assert status == 422 and reply["error"]["code"] == "recipient_opted_out"
    msg_id = env.send(contact, "your code is 123456", priority="urgent")
    env.wait_status(msg_id, {"delivered", "read"})
    assert env.request("DELETE", f"/admin/v1/opt-outs/{SENDER}/{contact}")[0] == 204
    assert env.request("GET", f"/admin/v1/opt-outs/{SENDER}/{contact}")[1]["opted_out"] is False
    env.send(contact, "sale!", priority="bulk")


def test_a_number_with_a_trailing_newline_is_refused_not_a_way_around_an_opt_out(env):
    """Found by fuzzing: every `^...$` pattern took one trailing newline (Python's `$` matches before
    it), so "+1...\\n" was a valid recipient that no opt-out, pair limit or list named."""
    contact = "+14155550161"
    assert env.request("PUT", f"/admin/v1/opt-outs/{SENDER}/{contact}")[0] == 200
    status, reply = env.request("POST", "/v1/messages", {"to": contact + "\n", "text": {"body": "sale!"}, "priority": "bulk"})
    assert status == 422 and reply["error"]["details"]["path"] == "$.to", reply
    assert env.request("PUT", f"/admin/v1/opt-outs/{SENDER}/{contact}%0A")[1]["error"]["code"] == "invalid_field"
    assert env.request("PUT", "/admin/v1/sensitive-words/spam%0A", {"action": "flag", "terms": ["x"]})[0] == 422


def test_policy_actions_are_recorded_audited_and_counted(env):
    put_list(env, "fraud", "block", ["send your pin"])
    env.request("POST", "/v1/messages", {"to": "+14155550170", "text": {"body": "send your pin"}})
    events = env.request("GET", "/admin/v1/policy-events?limit=5")[1]["events"]
    assert events[0]["action"] == "block" and events[0]["message_id"] is None
    assert events[0]["hits"][0]["term"] == "send your pin"
    audit = env.request("GET", "/admin/v1/audit")[1]["entries"]
    assert any(e["action"] == "sensitive_words.put" and e["target"] == "fraud" for e in audit)
    metrics = env.request("GET", "/metrics", auth=False)[1].decode()
    assert 'gateway_policy_hits_total{category="fraud",action="block"}' in metrics


def test_policy_routes_refuse_bad_input_with_stable_codes(env):
    assert env.request("PUT", "/admin/v1/sensitive-words/Bad%20Name", {"action": "block", "terms": ["x"]})[1][
        "error"]["code"] == "invalid_field"
    status, reply = env.request("PUT", "/admin/v1/sensitive-words/x", {"action": "shout", "terms": ["x"]})
    assert status == 422 and reply["error"]["details"]["path"] == "$.action"
    status, reply = env.request("PUT", "/admin/v1/sensitive-words/x", {"action": "block", "terms": ["..."]})
    assert status == 422 and reply["error"]["code"] == "invalid_term"
    assert env.request("DELETE", "/admin/v1/sensitive-words/never")[1]["error"]["code"] == "word_list_not_found"
    # decoded once: "%2566" is "%66", not a name, and never "f"
    assert env.request("PUT", "/admin/v1/sensitive-words/%2566ake", {"action": "flag", "terms": ["x1"]})[1][
        "error"]["code"] == "invalid_field"
    assert env.request("PUT", "/admin/v1/sensitive-words/%66ake", {"action": "flag", "terms": ["x1"]})[0] == 201
    assert env.request("DELETE", "/admin/v1/sensitive-words/fake")[0] == 204
    assert env.request("GET", "/admin/v1/sensitive-words?workspace=nope")[1]["error"]["code"] == "workspace_not_found"
    assert env.request("PUT", f"/admin/v1/opt-outs/{SENDER}/12345")[1]["error"]["code"] == "invalid_field"
    assert env.request("POST", "/admin/v1/reviews/01M80G6YDF0AVP1GGNM3839WG0/approve")[0] == 404
    env.request("PUT", "/admin/v1/sensitive-words/limits", {"action": "flag", "terms": ["zzq"]})  # an audit entry
    for limit in ("%C2%B2", "9" * 5000, "0", "-1", "x"):  # "²" is a digit to str.isdigit, not to int()
        for path in ("/admin/v1/audit", "/admin/v1/policy-events"):
            status, reply = env.request("GET", f"{path}?limit={limit}")
            assert status == 422 and reply["error"]["details"]["path"] == "limit", (path, limit, reply)


def test_an_admin_addresses_another_workspace_and_other_roles_cannot(env):
    put_list_other = env.request("PUT", "/admin/v1/sensitive-words/spam?workspace=other",
                                 {"action": "block", "terms": ["free"]})
    assert put_list_other[0] == 201 and put_list_other[1]["workspace"] == "other"
    lists = env.request("GET", "/admin/v1/sensitive-words")[1]["lists"]
    assert next(e for e in lists if e["category"] == "spam")["action"] == "flag"  # default is untouched
    supervisor = env.request("POST", "/admin/v1/api-keys", {"workspace": "default", "role": "supervisor"})[1]["key"]
    status, reply = env.request("GET", "/admin/v1/reviews?workspace=other", key=supervisor)
    assert status == 403 and reply["error"]["code"] == "forbidden_workspace"
    assert env.request("GET", "/admin/v1/reviews", key=supervisor)[0] == 200

"""The HTTP API through a real gateway process (embedded netsim): sending, batches,
idempotency, validation errors, auth and roles, limits, metrics."""
import http.client
import json
import re
import socket

import pytest

from tests.harness import Gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = Gateway(tmp_path_factory.mktemp("gw"), request_timeout_s=0.5, max_body_bytes=64 * 1024,
                max_header_bytes=4096).start()
    yield g
    g.stop()


def key_for(gw, role, workspace="default"):
    status, reply = gw.request("POST", "/admin/v1/api-keys", {"workspace": workspace, "role": role})
    assert status == 201, reply
    return reply["key"]


def test_send_reaches_delivered_with_a_timeline(gw):
    msg_id = gw.send("+14155550100", "hello", client_ref="order-1", priority="urgent")
    view = gw.wait_status(msg_id, {"delivered", "read"})
    statuses = [e["status"] for e in view["timeline"]]
    assert statuses[:3] == ["accepted", "sent", "delivered"]
    assert view["from"] == "+15550000001" and view["client_ref"] == "order-1"
    assert view["priority"] == "urgent"


def test_from_may_be_given_explicitly(gw):
    msg_id = gw.send("+14155550101", **{"from": "+15550000002"})
    assert gw.wait_status(msg_id, {"delivered", "read"})["from"] == "+15550000002"


def test_sender_of_another_workspace_is_refused(gw):
    status, reply = gw.request("POST", "/v1/messages",
                               {"from": "+15550000009", "to": "+14155550100", "text": {"body": "x"}})
    assert status == 422 and reply["error"]["code"] == "unknown_sender"


def test_workspace_without_default_sender_needs_from(gw):
    key = key_for(gw, "app", "other")
    status, reply = gw.request("POST", "/v1/messages", {"to": "+14155550100", "text": {"body": "x"}}, key=key)
    assert status == 422 and reply["error"]["code"] == "sender_required"


def test_malformed_json_is_400(gw):
    status, reply = gw.request("POST", "/v1/messages", b"{not json")
    assert status == 400 and reply["error"]["code"] == "invalid_json"


NOT_UTF8 = b'{"to": "+14155550100", "text": {"body": "caf\xe9"}}'  # a Latin-1 body: not JSON
TOO_DEEP = b"[" * 5000 + b"]" * 5000  # past the decoder's recursion limit where the shape is open


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/messages", NOT_UTF8),
    ("POST", "/v1/messages/batch", b'{"messages": [' + TOO_DEEP + b"]}"),
    ("PATCH", "/admin/v1/senders/+15550000001", b'{"tier": "\xff"}'),
    ("PUT", "/admin/v1/sensitive-words/utf8", b'{"action": "flag", "terms": ["\xc3"]}'),
    ("POST", "/admin/v1/reviews/01ARZ3NDEKTSV4RRFFQ69G5FAV/reject", b'{"reason": "\xe9"}'),
])
def test_bytes_that_are_not_utf8_or_nest_too_deeply_are_400_invalid_json(gw, method, path, body):
    status, reply = gw.request(method, path, body)
    assert status == 400 and reply["error"]["code"] == "invalid_json", reply
    assert "Traceback" not in gw.read_log()


def test_a_batch_item_that_is_not_utf8_fails_alone(gw):
    body = b'{"messages": [' + NOT_UTF8 + b', {"to": "+14155550102", "text": {"body": "ok"}}]}'
    status, reply = gw.request("POST", "/v1/messages/batch", body)
    assert status == 202, reply
    first, second = reply["results"]
    assert first["error"]["code"] == "invalid_json" and first["index"] == 0
    assert second["status"] == "accepted"


@pytest.mark.parametrize("body,path", [
    ({"to": "14155550100", "text": {"body": "x"}}, "$.to"),
    ({"to": "+14155550100", "text": {"body": ""}}, "$.text.body"),
    ({"to": "+14155550100", "text": {"body": "x"}, "priority": "asap"}, "$.priority"),
    ({"to": "+14155550100"}, "$"),
])
def test_invalid_fields_are_422_with_the_path(gw, body, path):
    status, reply = gw.request("POST", "/v1/messages", body)
    assert status == 422, reply
    assert reply["error"]["code"] == "invalid_field" and reply["error"]["details"]["path"] == path


def test_batch_answers_each_item(gw):
    items = [{"to": f"+1415555{i:04d}", "text": {"body": f"n{i}"}} for i in range(5)]
    items.insert(2, {"to": "bad", "text": {"body": "x"}})
    status, reply = gw.request("POST", "/v1/messages/batch", {"messages": items})
    assert status == 202 and reply["accepted"] == 5 and reply["rejected"] == 1
    assert reply["results"][2]["error"]["details"]["path"] == "$.messages[2].to"
    ids = [r["id"] for r in reply["results"] if "id" in r]
    for msg_id in ids:
        gw.wait_status(msg_id, {"delivered", "read"})


def test_a_batch_items_refusal_names_its_field_within_the_batch(gw):
    items = [{"to": "+14155550100", "text": {"body": "ok"}},
             {"to": "+14155550100", "text": {"body": "x" * 4097}},
             {"from": "+15559999999", "to": "+14155550100", "text": {"body": "x"}}]
    status, reply = gw.request("POST", "/v1/messages/batch", {"messages": items})
    assert status == 202 and reply["accepted"] == 1
    errors = [(r["error"]["code"], r["error"]["details"]["path"]) for r in reply["results"][1:]]
    assert errors == [("body_too_long", "$.messages[1].text.body"), ("unknown_sender", "$.messages[2].from")]


def test_a_send_to_one_of_the_gateways_own_numbers_is_refused(gw):
    for to in ("+15550000001", "+15550000009"):  # its own sender, another workspace's
        status, reply = gw.request("POST", "/v1/messages", {"to": to, "text": {"body": "loop"}})
        assert status == 422 and reply["error"]["details"]["path"] == "$.to", reply


def test_batch_over_the_limit_is_refused(gw):
    items = [{"to": "+14155550100", "text": {"body": "x"}}] * 1001
    status, reply = gw.request("POST", "/v1/messages/batch", {"messages": items})
    assert status == 422 and reply["error"]["code"] == "batch_too_large"


def accepted_total(gw) -> float:
    _, text = gw.request("GET", "/metrics", auth=False)
    line = next(ln for ln in text.decode().splitlines() if ln.startswith("gateway_messages_accepted_total "))
    return float(line.split()[1])


def test_idempotent_retry_returns_the_first_answer_and_sends_once(gw):
    body = {"to": "+14155550123", "text": {"body": "once"}}
    before = accepted_total(gw)
    s1, r1 = gw.request("POST", "/v1/messages", body, headers={"Idempotency-Key": "abc-1"})
    s2, r2 = gw.request("POST", "/v1/messages", body, headers={"Idempotency-Key": "abc-1"})
    assert s1 == s2 == 202 and r1 == r2
    assert gw.last_headers.get("Idempotent-Replayed") == "true"
    assert accepted_total(gw) == before + 1
    s3, r3 = gw.request("POST", "/v1/messages", {**body, "text": {"body": "other"}},
                        headers={"Idempotency-Key": "abc-1"})
    assert s3 == 422 and r3["error"]["code"] == "idempotency_key_reused"


def test_idempotency_key_must_be_printable_ascii(gw):
    status, reply = gw.request("POST", "/v1/messages", {"to": "+14155550100", "text": {"body": "x"}},
                               headers={"Idempotency-Key": "\u00e9" * 255})
    assert status == 400 and reply["error"]["code"] == "invalid_idempotency_key"
    assert gw.send("+14155550100")  # and nothing else was disturbed


def test_missing_and_bad_keys_get_401(gw):
    status, reply = gw.request("POST", "/v1/messages", {}, auth=False)
    assert status == 401 and reply["error"]["code"] == "missing_api_key"
    assert gw.last_headers.get("WWW-Authenticate") == "Bearer"
    status, reply = gw.request("POST", "/v1/messages", {}, key="gw_0123456789abcdef_" + "x" * 43)
    assert status == 401 and reply["error"]["code"] == "invalid_api_key"


def test_each_role_reaches_only_its_routes(gw):
    app, agent = key_for(gw, "app"), key_for(gw, "agent")
    status, reply = gw.request("POST", "/v1/messages", {"to": "+14155550100", "text": {"body": "x"}}, key=agent)
    assert status == 403 and reply["error"]["code"] == "forbidden_role"
    status, _ = gw.request("POST", "/admin/v1/api-keys", {"workspace": "default", "role": "admin"}, key=app)
    assert status == 403
    # a key for a workspace the config does not have would act where no one else can look
    status, reply = gw.request("POST", "/admin/v1/api-keys", {"workspace": "ghost", "role": "admin"})
    assert status == 404 and reply["error"]["code"] == "workspace_not_found"
    status, _ = gw.request("POST", "/v1/messages", {"to": "+14155550100", "text": {"body": "x"}}, key=app)
    assert status == 202


def test_keys_are_listed_without_secrets_and_a_revoked_key_is_refused_on_its_open_connection(gw):
    status, made = gw.request("POST", "/admin/v1/api-keys", {"workspace": "default", "role": "app", "label": "crm"})
    assert status == 201 and made["revoked_at"] is None
    key, key_id = made["key"], made["id"]
    send = json.dumps({"to": "+14155550100", "text": {"body": "x"}})
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)  # one keep-alive connection
    try:
        def post():
            conn.request("POST", "/v1/messages", send, {"Authorization": f"Bearer {key}"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())

        assert post()[0] == 202
        sock = conn.sock  # the cached check of this connection is what revocation must undo
        status, listing = gw.request("GET", "/admin/v1/api-keys?workspace=default")
        assert status == 200
        mine = [k for k in listing["keys"] if k["id"] == key_id]
        assert mine == [{"id": key_id, "workspace": "default", "role": "app", "label": "crm",
                         "created_at": made["created_at"], "revoked_at": None}]
        assert key.split("_", 2)[2] not in json.dumps(listing)
        status, revoked = gw.request("DELETE", f"/admin/v1/api-keys/{key_id}")
        assert status == 200 and revoked["revoked_at"] is not None
        status, reply = post()
        assert (status, reply["error"]["code"]) == (401, "revoked_api_key")
        assert conn.sock is sock  # on the same keep-alive connection
    finally:
        conn.close()
    status, again = gw.request("DELETE", f"/admin/v1/api-keys/{key_id}")
    assert status == 200 and again["revoked_at"] == revoked["revoked_at"]  # revoked once
    status, listing = gw.request("GET", "/admin/v1/api-keys")
    assert [k["revoked_at"] for k in listing["keys"] if k["id"] == key_id] == [revoked["revoked_at"]]
    status, log = gw.request("GET", "/admin/v1/audit?workspace=default")
    actions = [(e["action"], e["target"]) for e in log["entries"]]
    assert ("api_key.revoke", key_id) in actions and ("api_key.create", key_id) in actions


def test_revoking_an_unknown_key_is_404_and_the_last_admin_key_is_kept(gw):
    for unknown in ("0123456789abcdef", "x" * 3000, "%00"):
        status, reply = gw.request("DELETE", f"/admin/v1/api-keys/{unknown}")
        assert (status, reply["error"]["code"]) == (404, "api_key_not_found")
    status, listing = gw.request("GET", "/admin/v1/api-keys")
    admins = [k["id"] for k in listing["keys"] if k["role"] == "admin" and k["revoked_at"] is None]
    own = gw.key.split("_")[1]
    for other in admins:
        if other != own:
            assert gw.request("DELETE", f"/admin/v1/api-keys/{other}")[0] == 200
    status, reply = gw.request("DELETE", f"/admin/v1/api-keys/{own}")
    assert (status, reply["error"]["code"]) == (409, "last_admin_key")
    assert gw.request("GET", "/admin/v1/api-keys")[0] == 200  # still in force
    status, reply = gw.request("GET", "/admin/v1/api-keys?workspace=Not%20A%20Name")
    assert (status, reply["error"]["code"]) == (422, "invalid_field")
    app = key_for(gw, "app")
    assert gw.request("GET", "/admin/v1/api-keys", key=app)[0] == 403
    assert gw.request("DELETE", f"/admin/v1/api-keys/{own}", key=app)[0] == 403


def test_messages_of_another_workspace_are_invisible(gw):
    msg_id = gw.send("+14155550100")
    other = key_for(gw, "app", "other")
    status, reply = gw.request("GET", f"/v1/messages/{msg_id}", key=other)
    assert status == 404 and reply["error"]["code"] == "message_not_found"


def test_unknown_route_404_and_wrong_method_405(gw):
    assert gw.request("GET", "/v1/nothing")[0] == 404
    status, reply = gw.request("DELETE", "/v1/messages")
    assert status == 405 and gw.last_headers["Allow"] == "POST"
    status, _ = gw.request("DELETE", "/healthz", auth=False)
    assert status == 405 and gw.last_headers["Allow"] == "GET, HEAD"


def test_head_answers_as_get_does_without_the_body(gw):
    status, body = gw.request("HEAD", "/readyz", auth=False)
    assert status in (200, 503) and body == b"" and int(gw.last_headers["Content-Length"]) > 0
    msg_id = gw.send("+14155550100")
    status, body = gw.request("HEAD", f"/v1/messages/{msg_id}")
    assert status == 200 and body == b""
    # a parameter is decoded once, by its route
    assert gw.request("GET", f"/v1/messages/{msg_id[:-1]}%{ord(msg_id[-1]):02X}")[0] == 200
    assert gw.request("HEAD", f"/v1/messages/{msg_id}", auth=False)[0] == 401  # the GET route's roles


def test_body_over_the_limit_is_413(gw):
    status, reply = gw.request("POST", "/v1/messages", b"x" * (65 * 1024))
    assert status == 413 and reply["error"]["code"] == "payload_too_large"


def test_oversized_headers_are_431(gw):
    status, reply = gw.request("GET", "/healthz", auth=False, headers={"X-Big": "y" * 5000})
    assert status == 431 and reply["error"]["code"] == "headers_too_large"


def test_a_client_too_slow_to_send_its_request_gets_408_and_is_closed(gw):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"to\"")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in data


def test_keep_alive_and_pipelining_answer_in_order(gw):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"404", b"200"]


def test_metrics_expose_counters_queue_depth_and_histograms(gw):
    gw.wait_status(gw.send("+14155550177"), {"delivered", "read"})
    status, text = gw.request("GET", "/metrics", auth=False)
    text = text.decode()
    assert status == 200
    for name in ("gateway_messages_accepted_total", 'gateway_messages_status_total{status="delivered"}',
                 'gateway_queue_depth{priority="bulk"}', "gateway_http_request_duration_seconds_bucket",
                 "gateway_accepted_to_delivered_seconds_count"):
        assert name in text, name
    # every accept, dispatch round and receipt batch went through a timed group commit
    commits = next(ln for ln in text.splitlines() if ln.startswith("gateway_store_commit_seconds_count "))
    took = next(ln for ln in text.splitlines() if ln.startswith("gateway_store_commit_seconds_sum "))
    assert float(commits.split()[1]) >= 3 and float(took.split()[1]) > 0
    # where the event loop's time went, by kind of task
    busy = {ln.split('"')[1]: float(ln.split()[-1]) for ln in text.splitlines()
            if ln.startswith("gateway_loop_busy_seconds_total{")}
    assert {"http", "store", "delivery", "network"} <= set(busy) and all(v >= 0 for v in busy.values()), busy
    assert busy["http"] > 0 and busy["store"] > 0 and busy["app"] < 60  # (not counted from the epoch)
    assert "# TYPE gateway_loop_busy_seconds_total counter" in text
    idle = next(ln for ln in text.splitlines() if ln.startswith("gateway_loop_idle_seconds_total "))
    assert float(idle.split()[1]) > 0
    # every answer by route, status and error code
    assert gw.request("POST", "/v1/messages", {"to": "nope", "text": {"body": "x"}})[0] == 422
    _, text = gw.request("GET", "/metrics", auth=False)
    answers = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.decode().splitlines()
               if ln.startswith("gateway_http_responses_total{")}
    assert answers['gateway_http_responses_total{route="/v1/messages",status="422",code="invalid_field"}'] >= 1
    assert answers['gateway_http_responses_total{route="/v1/messages",status="202",code=""}'] >= 1
    # the pair journal's records as stored (a dispatch took from this pair's bucket)
    assert gw.metric("gateway_pair_log_records") >= 1
    assert gw.metric("gateway_webhook_dead_letters") == 0


def test_readyz_reports_ready_with_the_link_up(gw):
    status, reply = gw.request("GET", "/readyz", auth=False)
    assert status == 200 and reply["status"] == "ready"

"""End-to-end encryption through real processes: every send is a Signal-protocol message that
netsim decrypts (zero failures), a restart or a partition re-sends the stored ciphertext byte for
byte, undecryptable messages fail with netsim's reason, sender bundles are published, rotated and
refilled, and safety numbers match Signal's computation."""
import json
import threading
import time

import pytest
import trio

from gateway.crypto.fingerprint import safety_number
from gateway.crypto.identity import IdentityKey, PrekeyBundle, derive_identity
from gateway.e2e import envelope
from gateway.e2e import keys as K
from gateway.network.frames import BundleReply, BundleRequest, FrameDecoder, Submit, encode_frames
from gateway.network.link import handshake
from loadtest.netsim.devices import seed_bytes
from tests.harness import Gateway, Netsim, Proxy, WebhookReceiver, wait_for

pytestmark = pytest.mark.e2e
SENDER = "+15550000001"


def captured_submits(path) -> list[Submit]:
    return [f for f in FrameDecoder().feed(path.read_bytes()) if isinstance(f, Submit)]


def test_sends_are_ciphertext_that_netsim_decrypts_with_zero_failures(tmp_path):
    capture = tmp_path / "capture.bin"
    netsim = Netsim("--seed", "4", "--latency-ms", "5", "--capture", str(capture)).start()
    gw = Gateway(tmp_path, netsim=netsim).start()
    try:
        ids = [gw.send(f"+1415570{i % 10:04d}", f"secret text {i}") for i in range(30)]
        for msg_id in ids:
            gw.wait_status(msg_id, {"delivered", "read"})
        stats = netsim.stats()
        assert (stats["decrypted"], stats["decrypt_failures"], stats["sessions"]) == (30, 0, 10)
        assert stats["bundles_served"] == 10  # one per new recipient, none per message
        submits = wait_for(lambda: len(captured_submits(capture)) >= 30 and captured_submits(capture),
                           what="the capture file")
        assert all(b"secret text" not in s.payload for s in submits)
        first = {}
        for s in submits:
            first.setdefault(s.recipient, s)
        assert all(envelope.decode(s.payload)[0] is not None for s in first.values())  # PQXDH header
    finally:
        gw.stop()
        netsim.stop()


def test_kill_9_mid_stream_netsim_decrypts_everything_exactly_once(tmp_path):
    netsim = Netsim("--seed", "3", "--latency-ms", "5").start()
    gw = Gateway(tmp_path, netsim=netsim).start()
    accepted: list[str] = []
    stop = threading.Event()

    try:
        sender = threading.Thread(target=gw.send_stream,
                                  args=(accepted, stop, 3000, lambda i: f"+1415571{i % 40:04d}"))
        sender.start()
        wait_for(lambda: len(accepted) >= 200, what="200 accepted")
        gw.kill()
        stop.set()
        sender.join(10)
        gw.start()
        for msg_id in accepted:
            gw.wait_status(msg_id, {"delivered", "read"}, timeout=60)
        stats = netsim.stats()
        assert stats["decrypt_failures"] == 0, stats["decrypt_failure_reasons"]
        assert stats["unique"] == stats["decrypted"] >= len(accepted)
        assert stats["sessions"] == 40  # sessions survived the restart: none agreed twice
    finally:
        stop.set()
        gw.stop()
        netsim.stop()


def test_retransmits_after_a_partition_and_throttling_are_the_stored_ciphertext(tmp_path):
    capture = tmp_path / "capture.bin"
    (tmp_path / "netsim.toml").write_text("throttle_share = 0.3\nthrottle_retry_after_ms = 50\nlatency_ms_median = 5.0\n")
    netsim = Netsim("--seed", "6", "--config", str(tmp_path / "netsim.toml"), "--capture", str(capture)).start()
    proxy = Proxy(netsim.port).start()
    gw = Gateway(tmp_path, netsim=netsim, network_port=proxy.port).start()
    try:
        first = [gw.send(f"+1415572{i % 5:04d}", f"a{i}") for i in range(25)]
        proxy.cut()
        during = [gw.send(f"+1415572{i % 5:04d}", f"b{i}") for i in range(25)]
        proxy.start()
        for msg_id in first + during:
            gw.wait_status(msg_id, {"delivered", "read"}, timeout=30)
        stats = netsim.stats()
        assert stats["decrypt_failures"] == 0 and stats["decrypted"] == 50 and stats["throttled"] > 0
        payloads: dict[str, set[bytes]] = {}
        for s in wait_for(lambda: len({s.id for s in captured_submits(capture)}) >= 50
                          and captured_submits(capture), what="the capture file"):
            payloads.setdefault(s.id, set()).add(s.payload)
        assert len(payloads) == 50 and all(len(p) == 1 for p in payloads.values())  # never re-encrypted
    finally:
        gw.stop()
        proxy.stop()
        netsim.stop()


def test_undecryptable_message_fails_with_netsims_reason_in_the_api_and_the_webhook(tmp_path):
    hooks = WebhookReceiver().start()
    netsim = Netsim("--seed", "8", "--latency-ms", "5").start()
    gw = Gateway(tmp_path, netsim=netsim, webhook_url=hooks.url).start()
    try:
        gw.wait_status(gw.send("+14155730000", "hello"), {"delivered", "read"})
        time.sleep(0.3)  # the delivered receipt confirmed the session: no more initial headers
        netsim.stop()  # a network that lost every session
        netsim = Netsim("--seed", "8", "--latency-ms", "5", port=netsim.port).start()
        msg_id = gw.send("+14155730000", "after the loss")
        view = gw.wait_status(msg_id, {"failed"}, timeout=30)
        assert view["reason"] == "undecryptable_no_session"
        event = wait_for(lambda: [e for e in hooks.events() if e["data"]["message_id"] == msg_id
                                  and e["data"]["status"] == "failed"], what="the failed webhook")[0]
        assert event["data"]["reason"] == "undecryptable_no_session"
        assert netsim.stats()["decrypt_failure_reasons"] == {"no_session": 1}
        # the failure reset the session: the next messages agree a new one and get through
        for text in ("again", "and again"):
            assert gw.wait_status(gw.send("+14155730000", text), {"delivered", "read", "failed"},
                                  timeout=30)["status"] in ("delivered", "read")
        assert netsim.stats()["decrypt_failure_reasons"] == {"no_session": 1}
    finally:
        gw.stop()
        netsim.stop()
        hooks.stop()


async def request_bundles(port: int, numbers: list[str]) -> dict[str, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        decoder, _, frames = await handshake(stream, "observer:test-customer")
        await stream.send_all(encode_frames([BundleRequest(1, numbers)]))
        found: dict[str, bytes] = {}
        with trio.fail_after(10):
            while True:
                for f in frames:
                    if isinstance(f, BundleReply):
                        found.update(f.bundles)
                        found.update((n, b"") for n in f.unknown)
                if len(found) >= len(numbers):
                    return found
                frames = decoder.feed(await stream.receive_some(65536))


def test_sender_bundles_are_published_rotated_and_their_one_time_pool_refilled(tmp_path):
    netsim = Netsim("--seed", "9").start()
    gw = Gateway(tmp_path, netsim=netsim)
    gw.config_path.write_text(gw.config_text + "\n[crypto]\nsigned_prekey_rotation_h = 0.0004\n"
                              "signed_prekey_grace_h = 0.01\none_time_prekeys = 6\none_time_prekeys_low = 3\n")
    gw.start()
    try:
        key_dir = f"{gw.data_dir}/keys"
        book = K.load(key_dir, SENDER)
        first = PrekeyBundle.decode(trio.run(request_bundles, netsim.port, [SENDER])[SENDER])
        assert first.identity_key == book.identity.public.ed25519 and first.one_time_prekey is not None
        IdentityKey(first.identity_key).verify(first.pq_prekey_signature, first.pq_prekey)
        rotated = wait_for(lambda: (b := PrekeyBundle.decode(trio.run(request_bundles, netsim.port, [SENDER])[SENDER]))
                           .signed_prekey_id > first.signed_prekey_id and b, what="a rotated signed prekey")
        assert rotated.identity_key == first.identity_key
        for _ in range(6):  # drain the pool below the low-water mark: the gateway tops it up
            trio.run(request_bundles, netsim.port, [SENDER])
        refilled = wait_for(lambda: PrekeyBundle.decode(trio.run(request_bundles, netsim.port, [SENDER])[SENDER])
                            .one_time_prekey is not None, what="a refilled pool")
        assert refilled
        assert K.load(key_dir, SENDER).signed_prekey_ids[-1] >= rotated.signed_prekey_id
    finally:
        gw.stop()
        netsim.stop()


def test_safety_number_is_signals_over_both_identity_keys(tmp_path):
    netsim = Netsim("--seed", "11", "--latency-ms", "5").start()
    gw = Gateway(tmp_path, netsim=netsim).start()
    try:
        recipient = "+14155740000"
        path = f"/admin/v1/senders/{SENDER}/safety-number/{recipient}"
        status, reply = gw.request("GET", path)
        assert (status, reply["error"]["code"]) == (404, "session_not_found")
        for bad in ("abc", "+1" + "5" * 600):  # answered 404 session_not_found, as if well formed
            status, reply = gw.request("GET", f"/admin/v1/senders/{SENDER}/safety-number/{bad}")
            assert (status, reply["error"]["code"], reply["error"]["details"]["path"]) == (422, "invalid_field", "recipient")
        gw.wait_status(gw.send(recipient), {"delivered", "read"})
        status, reply = gw.request("GET", path.replace("+", "%2B"))
        assert status == 200, reply
        sender_key = K.load(f"{gw.data_dir}/keys", SENDER).identity.public
        recipient_key = derive_identity(seed_bytes(11), recipient).public
        assert reply["safety_number"] == safety_number(SENDER, sender_key, recipient, recipient_key)
        assert len(reply["safety_number"]) == 60 and reply["safety_number"].isdigit()
        _, made = gw.request("POST", "/admin/v1/api-keys", {"workspace": "default", "role": "supervisor"})
        assert gw.request("GET", path, key=made["key"])[0] == 200
        _, app = gw.request("POST", "/admin/v1/api-keys", {"workspace": "default", "role": "app"})
        assert gw.request("GET", path, key=app["key"])[1]["error"]["code"] == "forbidden_role"
        # a supervisor of another workspace learns nothing about this workspace's senders
        _, other = gw.request("POST", "/admin/v1/api-keys", {"workspace": "other", "role": "supervisor"})
        status, reply = gw.request("GET", path, key=other["key"])
        assert (status, reply["error"]["code"]) == (404, "sender_not_found")
        status, reply = gw.request("GET", f"/admin/v1/senders/+15559999999/safety-number/{recipient}")
        assert (status, reply["error"]["code"]) == (404, "sender_not_found")
    finally:
        gw.stop()
        netsim.stop()


def test_two_senders_to_one_recipient_in_one_batch_get_a_one_time_prekey_each(tmp_path):
    """Found in review: both pairs used the one bundle fetched for the number, so the second
    session reused a one-time prekey and every message of that pair failed at the recipient."""
    gw = Gateway(tmp_path, sim="latency_ms_median = 5.0").start()
    try:
        to = "+14155550177"
        status, reply = gw.request("POST", "/v1/messages/batch", {"messages": [
            {"to": to, "from": "+15550000001", "text": {"body": "one"}},
            {"to": to, "from": "+15550000002", "text": {"body": "two"}},
        ]})
        assert status == 202, reply
        ids = [r["id"] for r in reply["results"]]
        ids += [gw.send(to, "again", **{"from": "+15550000002"}) for _ in range(3)]
        views = [gw.wait_status(i, {"delivered", "read", "failed"}) for i in ids]
        assert [v["status"] for v in views if v["status"] == "failed"] == [], views
    finally:
        gw.stop()

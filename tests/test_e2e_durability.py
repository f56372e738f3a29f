"""Durability through real processes: kill -9 mid-stream loses and duplicates nothing, a
restart rebuilds the queue and the limiter state, a full store answers 503 and loses nothing,
and signals repeated while the gateway stops do not interrupt its shutdown."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.harness import ROOT, Gateway, Netsim, Proxy

pytestmark = pytest.mark.e2e


def test_kill_9_mid_stream_every_202_reaches_netsim_exactly_once(tmp_path):
    record = tmp_path / "netsim.jsonl"
    netsim = Netsim("--seed", "3", "--latency-ms", "5", "--record", str(record)).start()
    gw = Gateway(tmp_path, netsim=netsim).start()
    accepted: list[str] = []
    stop = threading.Event()

    try:
        sender = threading.Thread(target=gw.send_stream, args=(accepted, stop, 5000, lambda i: f"+1415{i:07d}"))
        sender.start()
        deadline = time.monotonic() + 20
        while len(accepted) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        gw.kill()
        stop.set()
        sender.join(10)
        assert len(accepted) >= 300
        gw.start()
        for msg_id in accepted:
            gw.wait_status(msg_id, {"delivered", "read", "failed"}, timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the record file is flushed every 0.5 s
            unique = netsim.stats()["unique"]
            seen = [json.loads(line)["id"] for line in record.read_text().splitlines()]
            if set(accepted) <= set(seen) and len(seen) >= unique:
                break
            time.sleep(0.2)
        assert set(accepted) <= set(seen), "an accepted message never reached netsim"
        assert len(seen) == len(set(seen)), "netsim took a message twice"
        assert unique == len(set(seen))
    finally:
        stop.set()
        gw.stop()
        netsim.stop()


def test_restart_rebuilds_the_queue_and_keeps_the_rate(tmp_path):
    gw = Gateway(tmp_path).start()
    try:
        assert gw.request("PATCH", "/admin/v1/senders/+15550000001", {"tier": "restricted"})[0] == 200
        ids = [gw.send(f"+1415558{i:04d}") for i in range(8)]
        time.sleep(1.0)
        gw.stop()
        gw.start()
        time.sleep(1.0)
        statuses = [gw.request("GET", f"/v1/messages/{m}")[1]["status"] for m in ids]
        assert sum(s == "accepted" for s in statuses) == 3  # the bucket stayed empty across the restart
        assert gw.request("PATCH", "/admin/v1/senders/+15550000001", {"reset": True})[0] == 200
        for msg_id in ids:
            gw.wait_status(msg_id, {"delivered", "read"})
    finally:
        gw.stop()


def test_full_store_answers_503_storage_full_and_loses_nothing(tmp_path):
    gw = Gateway(tmp_path, map_size_mb=1, sim="latency_ms_median = 5.0").start()
    try:
        accepted, status, reply = gw.fill_store(400)
        assert status == 503 and reply["error"]["code"] == "storage_full", reply
        assert int(gw.last_headers["Retry-After"]) > 0
        assert accepted, "the map should hold at least a few messages"
        for msg_id in accepted:
            assert gw.request("GET", f"/v1/messages/{msg_id}")[0] == 200
        assert gw.request("GET", "/healthz", auth=False)[0] == 200
    finally:
        gw.stop()


def test_link_cut_mid_stream_reconnects_and_resends_the_outbox(tmp_path):
    netsim = Netsim("--seed", "5", "--latency-ms", "5").start()
    proxy = Proxy(netsim.port).start()
    gw = Gateway(tmp_path, netsim=netsim, network_port=proxy.port).start()
    try:
        first = [gw.send(f"+1415560{i:04d}") for i in range(50)]
        proxy.cut()  # a partition: sends are accepted and wait in the outbox
        during = [gw.send(f"+1415561{i:04d}") for i in range(50)]
        deadline = time.monotonic() + 5
        while gw.request("GET", "/readyz", auth=False)[0] != 503:  # the link notices the cut
            assert time.monotonic() < deadline, "readyz never reported the lost link"
            time.sleep(0.02)
        proxy.start()
        for msg_id in first + during:
            gw.wait_status(msg_id, {"delivered", "read"}, timeout=30)
        stats = netsim.stats()
        assert stats["unique"] == 100
        _, text = gw.request("GET", "/metrics", auth=False)
        assert b"gateway_network_connected 1" in text
    finally:
        gw.stop()
        proxy.stop()
        netsim.stop()


def test_a_full_queue_answers_429_with_retry_after(tmp_path):
    gw = Gateway(tmp_path, scheduler="max_queued = 45").start()
    try:
        assert gw.request("PATCH", "/admin/v1/senders/+15550000002", {"rate_per_minute": 1, "burst": 1})[0] == 200
        statuses = []
        for i in range(60):
            status, reply = gw.request("POST", "/v1/messages", {"from": "+15550000002", "to": f"+1415562{i:04d}",
                                                                "text": {"body": "x"}})
            statuses.append(status)
            if status != 202:
                break
        assert statuses[-1] == 429 and reply["error"]["code"] == "queue_full"
        assert int(gw.last_headers["Retry-After"]) > 0
    finally:
        gw.stop()


def files_containing(root, needle: bytes) -> list[str]:
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                if needle in f.read():
                    found.append(os.path.join(folder, name))
    return found


def test_message_text_is_in_no_file_under_the_data_directory(tmp_path):
    marker = f"marker-{uuid.uuid4().hex}"
    gw = Gateway(tmp_path, sim="latency_ms_median = 5.0").start()
    try:
        held = gw.send("+14155550101", marker, **{"from": "+15550000002"})  # standard tier: sent
        assert gw.request("PATCH", "/admin/v1/senders/+15550000002", {"rate_per_minute": 1, "burst": 1})[0] == 200
        pending = [gw.send(f"+1415563{i:04d}", marker, **{"from": "+15550000002"}) for i in range(3)]
        gw.wait_status(held, {"delivered", "read"})
        # a flag list hit quotes the text as sent in the 202, which an Idempotency-Key stores
        quoted = f"Z.O.R.B.L.A.X {marker}"
        assert gw.request("PUT", "/admin/v1/sensitive-words/tmp-flag",
                          {"action": "flag", "terms": ["zorblax"]})[0] in (200, 201)
        for _ in range(2):  # the first answer, then its replay from the idempotency record
            status, reply = gw.request("POST", "/v1/messages",
                                       {"to": "+14155550199", "text": {"body": f"hi {quoted} x"},
                                        "from": "+15550000002"}, headers={"Idempotency-Key": "k-marker"})
            assert status == 202 and reply["policy"]["hits"][0]["matched"] == "Z.O.R.B.L.A.X", reply
        assert files_containing(gw.data_dir, marker.encode()) == []  # pending and delivered alike
        assert files_containing(gw.data_dir, b"Z.O.R.B.L.A.X") == []
        assert gw.request("GET", f"/v1/messages/{pending[-1]}")[1]["status"] == "accepted"
    finally:
        gw.stop()
    assert files_containing(gw.data_dir, marker.encode()) == []


def test_rotated_data_key_seals_new_messages_and_old_ones_still_go(tmp_path):
    gw = Gateway(tmp_path, sim="latency_ms_median = 5.0").start()
    try:
        assert gw.request("PATCH", "/admin/v1/senders/+15550000002", {"rate_per_minute": 1, "burst": 1})[0] == 200
        old = [gw.send(f"+1415564{i:04d}", "old", **{"from": "+15550000002"}) for i in range(3)]
        out = subprocess.run([sys.executable, "-m", "gateway", "keys", "rotate", "-c", str(gw.config_path)],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert out.returncode == 0 and "data key 2" in out.stdout, out.stderr
        status, reply = gw.request("POST", "/admin/v1/config/reload")
        assert status == 200 and "data_key" in reply["changes"]
        new = gw.send("+14155640099", "new", **{"from": "+15550000002"})
        assert gw.request("PATCH", "/admin/v1/senders/+15550000002", {"reset": True})[0] == 200
        for msg_id in old + [new]:
            gw.wait_status(msg_id, {"delivered", "read"})
    finally:
        gw.stop()


def test_signals_repeated_while_stopping_do_not_interrupt_the_shutdown(tmp_path):
    gw = Gateway(tmp_path).start()
    try:
        msg_id = gw.send("+14155550123")
        gw.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        while "SIGINT: stopping" not in gw.read_log():
            assert time.monotonic() < deadline, gw.read_log()
            time.sleep(0.002)
        gw.proc.send_signal(signal.SIGINT)  # Ctrl-C twice
        gw.proc.send_signal(signal.SIGTERM)  # and a supervisor's repeat
        assert gw.proc.wait(10) == 0
        log = gw.read_log()
        assert "gateway stopped" in log and "Traceback" not in log, log
        gw.start()
        gw.wait_status(msg_id, {"delivered", "read"})
    finally:
        gw.stop()

"""A stop (SIGTERM) under load through a real gateway process: every request it took gets its
answer before the process exits, so no client sees its connection drop after its message was
committed (and sends it again); requests after the stop get 503 shutting_down."""
import http.client
import json
import os
import signal
import socket
import threading
import time

import lmdb
import pytest

from tests.harness import Gateway

pytestmark = pytest.mark.e2e


def stored_messages(data_dir: str) -> int:
    env = lmdb.open(os.path.join(data_dir, "lmdb"), max_dbs=64, readonly=True, lock=False)
    try:
        db = env.open_db(b"messages", create=False)
        with env.begin() as txn:
            return txn.stat(db)["entries"]
    finally:
        env.close()


def test_a_stop_under_load_answers_every_request_it_committed(tmp_path):
    gw = Gateway(tmp_path, sim="latency_ms_median = 5.0").start()
    outcomes: dict = {}
    lock = threading.Lock()
    body = json.dumps({"to": "+14155550100", "text": {"body": "x"}})

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        while gw.proc.poll() is None:
            try:
                conn.request("POST", "/v1/messages", body, {"Authorization": f"Bearer {gw.key}"})
                resp = conn.getresponse()
                reply = json.loads(resp.read())
                outcome = 202 if resp.status == 202 else reply["error"]["code"]
            except (OSError, http.client.HTTPException):
                outcome = "connection"
                conn.close()
                time.sleep(0.01)
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=30) == 0
    for t in threads:
        t.join(timeout=30)
    assert outcomes.get(202, 0) > 100
    assert stored_messages(gw.data_dir) == outcomes[202]  # none committed without its 202
    assert set(outcomes) <= {202, "shutting_down", "connection"}  # (the 503 itself: the next test)
    assert "drained in" in gw.read_log()


def test_during_the_drain_new_requests_get_503_and_a_close_and_a_second_signal_ends_it(tmp_path):
    gw = Gateway(tmp_path)
    gw.config_text = gw.config_text.replace("[server]\n", "[server]\ndrain_timeout_s = 60.0\n", 1)
    gw.config_path.write_text(gw.config_text)
    gw.start()
    # a peer that asks for many answers and reads none: the gateway owes it bytes, so the drain waits
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(("127.0.0.1", gw.port))
    hog.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 400)
    keep = socket.create_connection(("127.0.0.1", gw.port), timeout=10)  # a keep-alive client
    keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert keep.recv(65536).startswith(b"HTTP/1.1 200")
    try:
        time.sleep(0.5)
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert gw.proc.poll() is None  # still draining: it owes the hog its answers
        body = json.dumps({"to": "+14155550100", "text": {"body": "late"}}).encode()
        keep.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + gw.key.encode() +
                     b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        answer = b""
        while chunk := keep.recv(65536):  # read to the end: the gateway closes the connection
            answer += chunk
        head, _, reply = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert b"retry-after: 1" in head.lower() and b"connection: close" in head.lower()
        assert json.loads(reply)["error"]["code"] == "shutting_down"
        with pytest.raises(OSError):  # the listener is closed: no new connection
            socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)  # a second signal ends the drain
        assert gw.proc.wait(timeout=30) == 0 and time.monotonic() - started < 10
        assert "a second signal" in gw.read_log() and "Traceback" not in gw.read_log()
    finally:
        hog.close()
        keep.close()
        if gw.proc.poll() is None:
            gw.proc.kill()

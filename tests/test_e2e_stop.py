"""A stop (SIGTERM) under load through a real gateway process: every request it took gets its
answer before the process exits, so no client sees its connection drop after its message was
committed (and sends it again); requests after the stop get 503 shutting_down."""
import http.client
import json
import os
import signal
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
    assert set(outcomes) <= {202, "shutting_down", "connection"}
    assert "drained in" in gw.read_log()

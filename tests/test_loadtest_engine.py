"""The open-loop engine against tiny local servers: answers are counted and kept, latency runs from the
intended start (a stalled server shows up in every request it delayed), a closed port fails fast."""
import socket
import threading
import time

import numpy as np

from loadtest.engine import REFUSED, LoadEngine
from loadtest.schedule import constant

_ANSWER = b"HTTP/1.1 202 Accepted\r\nContent-Length: 48\r\n\r\n" + b'{"id":"01KAAAAAAAAAAAAAAAAAAAAAAA","status":"ok"}'[:48]


class StallingServer:
    """Answers every request at once, except that it sleeps `stall_s` before the first request after `stall_at_s`."""

    def __init__(self, stall_at_s: float = 1e9, stall_s: float = 0.0) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stall_at, self.stall_s = stall_at_s, stall_s
        self.t0 = time.monotonic()
        self.requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    buf = buf[length:]
                    self.requests += 1
                    if self.stall_s and time.monotonic() - self.t0 >= self.stall_at:
                        time.sleep(self.stall_s)
                        self.stall_s = 0.0
                    conn.sendall(_ANSWER)

    def close(self) -> None:
        self.sock.close()


def _request(k: int) -> bytes:
    body = b'{"n":%d}' % k
    return b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_every_request_is_answered_counted_and_kept():
    server = StallingServer()
    try:
        engine = LoadEngine("127.0.0.1", server.port, constant(400, 0.5), _request, connections=4)
        await engine.run()
    finally:
        server.close()
    assert engine.issued == engine.completed == server.requests == 200
    assert engine.statuses == {b"202": 200} and len(engine.kept) == 200
    assert sorted(seq for seq, _, _ in engine.kept) == list(range(200))
    assert sum(engine.ok_by_sec) == 200 and not any(engine.failures.values())


async def test_latency_counts_from_the_intended_start_so_a_stall_delays_every_queued_request():
    server = StallingServer(stall_at_s=0.2, stall_s=0.3)
    try:
        engine = LoadEngine("127.0.0.1", server.port, constant(200, 1.0), _request, connections=1)
        await engine.run()
    finally:
        server.close()
    latencies = np.concatenate([np.frombuffer(a, dtype=np.int64) for a in engine.latency_us]) / 1000
    assert engine.completed == 200
    # ~60 requests were due during the 300 ms stall; a closed-loop measure would show one slow request
    assert (latencies > 100).sum() >= 30, sorted(latencies)[-40:]
    assert latencies.max() >= 280


async def test_a_closed_port_fails_requests_as_refused_without_waiting():
    port = socket.create_server(("127.0.0.1", 0))
    closed = port.getsockname()[1]
    port.close()
    engine = LoadEngine("127.0.0.1", closed, constant(100, 0.3), _request, connections=2)
    t0 = time.monotonic()
    await engine.run()
    assert time.monotonic() - t0 < 2.0
    assert engine.completed == 0 and engine.failures[REFUSED] == 30 and not engine.unknown_seqs

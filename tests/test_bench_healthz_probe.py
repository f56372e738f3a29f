"""bench/healthz_probe.py: the probe reads whole HTTP responses however they arrive, and times a
real server's answers until it is told to stop."""
import http.server
import socket
import threading
import time

import pytest

from bench import healthz_probe
from bench.healthz_probe import probe, read_response

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}"


def test_a_response_split_anywhere_is_read_whole_and_consumed():
    for cut in (1, 20, len(RESPONSE) - 16, len(RESPONSE) - 1):
        a, b = socket.socketpair()
        with a, b:
            a.sendall(RESPONSE[:cut])
            threading.Timer(0.05, a.sendall, (RESPONSE[cut:] + RESPONSE,)).start()
            buf = bytearray()
            assert read_response(b, buf)
            assert read_response(b, buf)  # the second one, pipelined behind the rest of the first
            assert buf == b""


def test_end_of_stream_before_a_whole_response_is_reported():
    a, b = socket.socketpair()
    with b:
        a.sendall(RESPONSE[:30])
        a.close()
        assert not read_response(b, bytearray())


class _Healthz(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # its headers and body go out in two writes

    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_probe_times_each_answer_until_its_time_is_up():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        start = time.monotonic()
        samples = probe(server.server_address[1], max_s=0.3)
        end = time.monotonic()
    finally:
        server.shutdown()
        server.server_close()
    pairs = list(zip(samples[0::2], samples[1::2]))
    assert len(pairs) >= 20
    assert all(start <= at <= end and 0 < rtt < 0.3 for at, rtt in pairs)


def test_a_response_it_cannot_frame_is_refused():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        with pytest.raises(ValueError):
            read_response(b, bytearray())


def test_a_server_that_stops_answering_is_recorded_as_one_stall_of_the_timeout(monkeypatch):
    monkeypatch.setattr(healthz_probe, "TIMEOUT_S", 0.2)
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        samples = probe(listener.getsockname()[1], max_s=5.0)  # accepted by the backlog, never answered
    assert len(samples) == 2 and samples[1] == 0.2

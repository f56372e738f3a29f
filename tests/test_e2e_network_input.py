"""Whatever the network sends ends at most that connection, never the gateway: a real gateway
process linked to a peer on 127.0.0.1 that answers its hello, then sends a frame it cannot decode;
and frames that decode but name no message (an empty id) change nothing and stop nothing."""
import socket
import socketserver
import struct
import threading
import time

import msgspec
import pytest

from gateway.network.frames import Ack, HelloOk, Receipt, encode_frame, encode_frames
from tests.harness import Gateway, Netsim, Proxy

pytestmark = pytest.mark.e2e


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _receipt_id_not_utf8() -> bytes:
    body = msgspec.msgpack.encode({"t": "receipt", "id": "@@", "status": "read", "at_ms": 1})
    return _frame(body.replace(b"\xa2@@", b"\xa2\xff\xfe"))


def _stats_nested_too_deep() -> bytes:
    body = msgspec.msgpack.encode({"t": "stats_reply", "data": {"x": 0}})
    return _frame(body[:-1] + b"\x91" * 5000 + b"\x90")


class PoisonPeer(socketserver.ThreadingTCPServer):
    """Answers each connection's hello; the first connection then gets `poison`. Every connection is
    read (and what it says dropped) until the gateway closes it."""

    daemon_threads = True

    def __init__(self, poison: bytes, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _PoisonedConnection)
        self.poison = poison
        self.delay_s = delay_s  # between the hello's answer and the poison
        self.port = self.server_address[1]
        self.connections = 0
        self.lock = threading.Lock()

    def start(self) -> "PoisonPeer":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _PoisonedConnection(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        peer, conn = self.server, self.request
        with peer.lock:
            peer.connections += 1
            first = peer.connections == 1
        try:
            conn.settimeout(30)
            header = b""
            while len(header) < 4:  # the hello's length prefix; its body is dropped with the rest
                chunk = conn.recv(4 - len(header))
                if not chunk:
                    return
                header += chunk
            conn.sendall(encode_frame(HelloOk(server="poison-peer")))
            if first:
                time.sleep(peer.delay_s)
                conn.sendall(peer.poison)
            while conn.recv(65536):
                pass
        except OSError:
            pass


@pytest.mark.parametrize("poison", [_receipt_id_not_utf8(), _stats_nested_too_deep()],
                         ids=["string-not-utf8", "nested-too-deep"])
def test_a_frame_the_gateway_cannot_decode_ends_that_connection_not_the_gateway(tmp_path, poison):
    peer = PoisonPeer(poison).start()
    gw = Gateway(tmp_path, network_port=peer.port).start()
    try:
        deadline = time.monotonic() + 15
        while peer.connections < 2:  # it dropped the poisoned connection and linked again
            assert gw.proc.poll() is None, f"the gateway exited: {gw.read_log()}"
            assert time.monotonic() < deadline, "the gateway never linked again"
            time.sleep(0.05)
        assert gw.request("GET", "/healthz", auth=False)[0] == 200
        status, reply = gw.request("POST", "/v1/messages", {"to": "+14155550100", "text": {"body": "hi"}})
        assert status == 202, reply
        assert "Traceback" not in gw.read_log()
    finally:
        gw.stop()
        peer.stop()


class InjectingProxy(Proxy):
    """The harness's relay between the gateway and netsim, passing netsim's frames on whole, so that
    a test can put frames of its own between two of them (`inject`) on every connection."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.to_gateway: list[tuple[socket.socket, threading.Lock]] = []

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        lock = threading.Lock()
        self.to_gateway.append((client, lock))
        threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._frames, args=(upstream, client, lock), daemon=True).start()

    @staticmethod
    def _frames(src: socket.socket, dst: socket.socket, lock: threading.Lock) -> None:
        buf = b""
        try:
            while data := src.recv(65536):
                buf += data
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                    end = 4 + struct.unpack(">I", buf[:4])[0]
                    with lock:
                        dst.sendall(buf[:end])
                    buf = buf[end:]
        except OSError:
            pass
        dst.close()

    def inject(self, data: bytes) -> None:
        for sock, lock in self.to_gateway:
            with lock:
                try:
                    sock.sendall(data)
                except OSError:
                    pass


def test_acks_and_receipts_without_a_message_id_change_nothing_and_stop_nothing(tmp_path):
    netsim = Netsim("--seed", "9", "--latency-ms", "5").start()
    proxy = InjectingProxy(netsim.port).start()
    gw = Gateway(tmp_path, netsim=netsim, network_port=proxy.port).start()
    try:
        gw.wait_status(gw.send("+14155550140"), {"delivered", "read"})
        # An empty id is a key LMDB refuses with an error that fails the whole commit it is in.
        proxy.inject(encode_frames([Receipt(id="", status="delivered", at_ms=1), Ack(id=""),
                                    Ack(id="", code="throttled", retry_after_ms=10), Ack(id="", code="rejected"),
                                    Receipt(id="x" * 600, status="read", at_ms=1)]))
        ids = [gw.send(f"+141555501{i:02d}") for i in range(41, 61)]
        for msg_id in ids:
            gw.wait_status(msg_id, {"delivered", "read"})
        assert "LMDB write failed" not in gw.read_log()
    finally:
        gw.stop()
        proxy.stop()
        netsim.stop()


def test_a_network_that_keeps_counting_zero_prekeys_left_gets_one_refill_at_a_time(tmp_path):
    """Each count below the low-water mark made a new pool of one-time prekeys and wrote the key
    file, on the event loop: 5,000 counts in a burst were ~5,000 pools and file writes (about a
    minute of a core here, the gateway unresponsive meanwhile). A refill on its way makes the
    counts that describe the pool before it arrived change nothing."""
    from gateway.network.frames import PrekeyCount

    burst = encode_frames([PrekeyCount("+15550000001", 0)] * 5000)
    peer = PoisonPeer(burst, delay_s=1.0).start()  # once the gateway is ready
    gw = Gateway(tmp_path, network_port=peer.port).start()
    try:
        time.sleep(1.0)
        for _ in range(10):  # the event loop keeps answering (with a pool per count: ~30 s of nothing)
            started = time.monotonic()
            assert gw.request("GET", "/healthz", auth=False)[0] == 200
            assert time.monotonic() - started < 2.0
            time.sleep(0.2)
        writes = gw.metric("gateway_key_file_writes")
        assert 1 <= writes <= 20, writes  # the first publish (a file per sender) and a few refills
        status, reply = gw.request("POST", "/v1/messages", {"to": "+14155550100", "text": {"body": "hi"}})
        assert status == 202, reply
        assert peer.connections == 1  # nothing wrong with the frames themselves: the link stays
    finally:
        gw.stop()
        peer.stop()

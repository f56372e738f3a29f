"""Whatever the network sends ends at most that connection, never the gateway: a real gateway
process linked to a peer on 127.0.0.1 that answers its hello, then sends a frame it cannot decode."""
import socket
import struct
import threading
import time

import msgspec
import pytest

from gateway.network.frames import HelloOk, encode_frame
from tests.harness import Gateway

pytestmark = pytest.mark.e2e


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _receipt_id_not_utf8() -> bytes:
    body = msgspec.msgpack.encode({"t": "receipt", "id": "@@", "status": "read", "at_ms": 1})
    return _frame(body.replace(b"\xa2@@", b"\xa2\xff\xfe"))


def _stats_nested_too_deep() -> bytes:
    body = msgspec.msgpack.encode({"t": "stats_reply", "data": {"x": 0}})
    return _frame(body[:-1] + b"\x91" * 5000 + b"\x90")


class PoisonPeer:
    """Answers each connection's hello; the first connection then gets `poison`. Every connection is
    read (and what it says dropped) until the gateway closes it."""

    def __init__(self, poison: bytes) -> None:
        self.poison = poison
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.lock = threading.Lock()

    def start(self) -> "PoisonPeer":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                first = self.connections == 1
            threading.Thread(target=self._serve, args=(conn, first), daemon=True).start()

    def _serve(self, conn: socket.socket, first: bool) -> None:
        try:
            conn.settimeout(30)
            header = b""
            while len(header) < 4:  # the hello's length prefix; its body is dropped with the rest
                chunk = conn.recv(4 - len(header))
                if not chunk:
                    return
                header += chunk
            conn.sendall(encode_frame(HelloOk(server="poison-peer")) + (self.poison if first else b""))
            while conn.recv(65536):
                pass
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


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

"""Wire codec for the network link: frame Structs, length-prefixed msgpack encoding, and a sans-I/O decoder.

It owns the byte format only and must never perform I/O, keep connection state, or interpret payloads.
"""

from __future__ import annotations

import struct

import msgspec
from msgspec import Struct

from gateway.decoding import DECODE_ERRORS

__all__ = [
    "MAX_FRAME",
    "Ack",
    "BundleReply",
    "BundleRequest",
    "Frame",
    "FrameDecoder",
    "CustomerSend",
    "CustomerSendReply",
    "FrameError",
    "Hello",
    "Inbound",
    "InboundAck",
    "HelloOk",
    "Ping",
    "Pong",
    "PrekeyCount",
    "PublishKeys",
    "Receipt",
    "ReceiptAck",
    "StatsReply",
    "StatsRequest",
    "Submit",
    "encode_frame",
    "encode_frames",
]

MAX_FRAME = 1 << 20  # largest allowed body, in bytes (the 4-byte prefix is not counted)
PROTOCOL_VERSION = 1


class FrameError(Exception):
    """A frame could not be encoded or decoded; the connection carrying it must be dropped."""


class _Frame(Struct, tag_field="t", array_like=False, omit_defaults=True, gc=False):
    """Common configuration of every frame body (tagged by the "t" key). Frames hold decoded data
    only and never take part in a reference cycle, so the garbage collector need not track them
    (thousands a second arrive as receipts and acks)."""


class Hello(_Frame, tag="hello"):
    version: int = PROTOCOL_VERSION
    client: str = ""


class HelloOk(_Frame, tag="hello_ok"):
    version: int = PROTOCOL_VERSION
    server: str = ""


class Submit(_Frame, tag="submit"):
    id: str
    sender: str
    recipient: str
    payload: bytes
    priority: int = 1


class Ack(_Frame, tag="ack"):
    # code: "ok" (taken: status "sent") | "throttled" (not taken; retry after retry_after_ms)
    #       | "rejected" (permanent; reason says why)
    id: str
    code: str = "ok"
    reason: str = ""
    retry_after_ms: int = 0


class Receipt(_Frame, tag="receipt"):
    # status: "delivered" | "read" | "failed" (reason e.g. "recipient_not_registered",
    #         "recipient_offline_expired")
    id: str
    status: str
    at_ms: int
    reason: str = ""


class ReceiptAck(_Frame, tag="receipt_ack"):
    ids: list[str]


class StatsRequest(_Frame, tag="stats"):
    pass


class StatsReply(_Frame, tag="stats_reply"):
    data: dict


class Ping(_Frame, tag="ping"):
    n: int = 0


class Pong(_Frame, tag="pong"):
    n: int = 0


class PublishKeys(_Frame, tag="publish_keys"):
    # A sender's public keys for the network to serve: `bundle` is an encoded PrekeyBundle without
    # a one-time prekey (identity, signed prekey, ML-KEM prekey); `one_time_prekeys` are added to
    # the sender's pool as (id, EncodeEC(public)) pairs. `replace` drops the pool held so far first.
    sender: str
    bundle: bytes
    one_time_prekeys: list[tuple[int, bytes]] = []
    replace: bool = False


class PrekeyCount(_Frame, tag="prekey_count"):
    # The network's answer to publish_keys, and its notice whenever it hands out one of the
    # sender's one-time prekeys: how many are left in the pool.
    sender: str
    left: int


class BundleRequest(_Frame, tag="bundle_request"):
    # Ask for one prekey bundle per number (each hands out one one-time prekey when there is one).
    id: int
    numbers: list[str]


class BundleReply(_Frame, tag="bundle_reply"):
    # (number, encoded PrekeyBundle) pairs, and the numbers that have no keys (not registered).
    # One request may be answered by several replies with the same id (a frame holds at most
    # about 500 PQ bundles); together they name every requested number once.
    id: int
    bundles: list[tuple[str, bytes]] = []
    unknown: list[str] = []


class Inbound(_Frame, tag="inbound"):
    # A customer's message to one of the client's numbers: `sender` is the customer, `recipient` the
    # client's number, `payload` the end-to-end envelope; `id` is the network's unique message id
    # (the client's dedupe key) and `at_ms` when the customer sent it. Re-sent after every hello
    # until an InboundAck names it.
    id: str
    sender: str
    recipient: str
    payload: bytes
    at_ms: int = 0


class InboundAck(_Frame, tag="inbound_ack"):
    # The client has durably processed these inbound messages (stored, or found undecryptable,
    # or recognised as already processed): the network stops re-sending them.
    ids: list[str]


class CustomerSend(_Frame, tag="customer_send"):
    # netsim control (any connection, observers included): make the simulated customer `sender`
    # send `text` to the client's number `recipient`, end-to-end encrypted like generated traffic.
    sender: str
    recipient: str
    text: str
    n: int = 0  # echoed in the reply


class CustomerSendReply(_Frame, tag="customer_send_reply"):
    # `id` of the Inbound message queued, or `error` ("not_published": the recipient has no
    # published keys; "e2e_off"; "bad_number").
    n: int = 0
    id: str = ""
    error: str = ""


Frame = (Hello | HelloOk | Submit | Ack | Receipt | ReceiptAck | StatsRequest | StatsReply | Ping | Pong
         | PublishKeys | PrekeyCount | BundleRequest | BundleReply | Inbound | InboundAck | CustomerSend
         | CustomerSendReply)

_encoder = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder(Frame).decode
_pack_len = struct.Struct(">I").pack_into
_unpack_len = struct.Struct(">I").unpack_from


def encode_frames(frames: list) -> bytes:
    """Encode frames as concatenated (4-byte big-endian length + msgpack body) records."""
    buf = bytearray()
    encode_into = _encoder.encode_into
    for frame in frames:
        start = len(buf)
        encode_into(frame, buf, start + 4)
        length = len(buf) - start - 4
        if length > MAX_FRAME:
            raise FrameError(f"frame body of {length} bytes exceeds {MAX_FRAME}")
        _pack_len(buf, start, length)
    return bytes(buf)


def encode_frame(frame) -> bytes:
    """Encode a single frame (length prefix included)."""
    return encode_frames([frame])


class FrameDecoder:
    """Incremental decoder: feed() raw bytes, get back every frame completed so far.

    After a FrameError the stream is desynchronised; discard the decoder and the connection.
    """

    __slots__ = ("_buf", "_pos", "_max", "raw")

    def __init__(self, max_frame: int = MAX_FRAME, *, keep_raw: bool = False) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max = max_frame
        # keep_raw: after each feed(), `raw` holds the exact bytes (length prefix included) of
        # every frame it returned, in the same order (for capture files)
        self.raw: list[bytes] | None = [] if keep_raw else None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed as complete frames."""
        return len(self._buf) - self._pos

    def feed(self, data) -> list:
        buf = self._buf
        buf += data
        pos = self._pos
        end_of_data = len(buf)
        out: list = []
        if end_of_data - pos < 4:
            if self.raw is not None:
                self.raw.clear()
            return out
        max_frame = self._max
        append = out.append
        raw = self.raw
        if raw is not None:
            raw.clear()
        with memoryview(buf) as view:
            while end_of_data - pos >= 4:
                (length,) = _unpack_len(buf, pos)
                if length > max_frame:
                    raise FrameError(f"frame length {length} exceeds {max_frame}")
                end = pos + 4 + length
                if end > end_of_data:
                    break
                try:
                    append(_decode(view[pos + 4 : end]))
                except DECODE_ERRORS as exc:  # (ValidationError is a DecodeError)
                    raise FrameError(f"bad frame body: {exc}") from None
                if raw is not None:
                    raw.append(bytes(view[pos:end]))
                pos = end
        if pos == end_of_data:
            buf.clear()
            pos = 0
        elif pos >= 65536:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return out

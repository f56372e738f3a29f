"""Specification of the link wire codec: 4-byte big-endian length + msgpack map tagged by "t"."""

import struct

import msgspec
import pytest

from gateway.network.frames import (
    MAX_FRAME,
    Ack,
    FrameDecoder,
    FrameError,
    Hello,
    HelloOk,
    Ping,
    Pong,
    Receipt,
    ReceiptAck,
    StatsReply,
    StatsRequest,
    Submit,
    encode_frame,
    encode_frames,
)

ONE_OF_EACH = [
    Hello(version=1, client="gw-1"),
    HelloOk(version=1, server="netsim"),
    Submit(id="m1", sender="+15550001", recipient="+15550002", payload=b"\x00\xffopaque", priority=3),
    Ack(id="m1"),
    Ack(id="m2", code="throttled", retry_after_ms=1000),
    Ack(id="m3", code="rejected", reason="payload_too_large"),
    Receipt(id="m1", status="delivered", at_ms=1_700_000_000_123),
    Receipt(id="m4", status="failed", at_ms=5, reason="recipient_not_registered"),
    ReceiptAck(ids=["m1", "m4"]),
    StatsRequest(),
    StatsReply(data={"submits": 3, "failed_reasons": {"x": 1}}),
    Ping(n=7),
    Pong(n=7),
]


def test_every_frame_type_round_trips():
    assert FrameDecoder().feed(encode_frames(ONE_OF_EACH)) == ONE_OF_EACH


def test_wire_format_is_big_endian_length_then_msgpack_map_tagged_t():
    data = encode_frame(Ping(n=5))
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert msgspec.msgpack.decode(data[4:]) == {"t": "ping", "n": 5}


def test_default_fields_are_omitted_on_the_wire():
    body = msgspec.msgpack.decode(encode_frame(Ack(id="m1"))[4:])
    assert body == {"t": "ack", "id": "m1"}


def test_decoder_fed_one_byte_at_a_time_yields_each_frame_once():
    data = encode_frames(ONE_OF_EACH)
    decoder = FrameDecoder()
    out = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    assert out == ONE_OF_EACH
    assert decoder.buffered == 0


def test_many_frames_in_one_feed_come_out_in_order():
    frames = [Submit(id=f"m{i}", sender="s", recipient="r", payload=b"p") for i in range(5000)]
    assert FrameDecoder().feed(encode_frames(frames)) == frames


def test_incomplete_tail_is_kept_for_the_next_feed():
    data = encode_frames([Ping(n=1), Ping(n=2)])
    decoder = FrameDecoder()
    assert decoder.feed(data[:-3]) == [Ping(n=1)]
    assert decoder.buffered > 0
    assert decoder.feed(data[-3:]) == [Ping(n=2)]


def test_oversize_length_prefix_raises_frame_error_before_the_body_arrives():
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME + 1))


def test_encoding_a_frame_larger_than_the_limit_raises_frame_error():
    with pytest.raises(FrameError):
        encode_frames([Submit(id="big", sender="s", recipient="r", payload=b"x" * MAX_FRAME)])


def test_garbage_body_raises_frame_error():
    body = b"\xc1\xc1\xc1"  # 0xc1 is never valid msgpack
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def test_unknown_tag_raises_frame_error():
    body = msgspec.msgpack.encode({"t": "teleport", "id": "m1"})
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def test_missing_required_field_raises_frame_error():
    body = msgspec.msgpack.encode({"t": "submit", "id": "m1"})
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def test_empty_body_raises_frame_error():
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", 0))


def receipt_with_id_bytes(raw_id: bytes) -> bytes:
    """A receipt frame whose id string holds `raw_id` as sent (msgpack str8, not checked for UTF-8)."""
    body = msgspec.msgpack.encode({"t": "receipt", "id": "@@", "status": "read", "at_ms": 1})
    body = body.replace(b"\xa2@@", b"\xd9" + bytes([len(raw_id)]) + raw_id)
    return struct.pack(">I", len(body)) + body


def test_a_string_that_is_not_utf8_raises_frame_error():
    assert FrameDecoder().feed(receipt_with_id_bytes(b"ok"))[0].id == "ok"
    with pytest.raises(FrameError):
        FrameDecoder().feed(receipt_with_id_bytes(b"\xff\xfe"))


def test_nesting_past_the_recursion_limit_raises_frame_error():
    body = msgspec.msgpack.encode({"t": "stats_reply", "data": {"x": 0}})
    assert body.endswith(b"\xa1x\x00")
    body = body[:-1] + b"\x91" * 5000 + b"\x90"  # [[[...[]...]]]: 5,000 arrays deep
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)

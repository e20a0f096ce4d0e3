"""The sans-I/O frame codec: each frame type, the stream state machine, limits, bad input, fuzz."""

from __future__ import annotations

import os
import struct

import lz4.block
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flq.transport import frames
from flq.transport.frames import (
    BodyChunk,
    ErrorCode,
    FrameError,
    FrameType,
    Limits,
    MessageEnd,
    PeerError,
    RequestHead,
    ResponseHead,
    StreamDecoder,
)


def decode_all(data: bytes, expect: str = "request", limits: Limits = frames.DEFAULT_LIMITS, step: int | None = None):
    decoder = StreamDecoder(expect, limits)
    events = []
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        events += decoder.feed(data[i : i + step])
    return decoder, events


def raw_frame(type_byte: int, payload: bytes, declared: int | None = None) -> bytes:
    return struct.pack(">IB", len(payload) if declared is None else declared, type_byte) + payload


# --- one test per frame type ---------------------------------------------------------------


def test_request_head_round_trip():
    frame = frames.encode_request_head(
        "POST", "/v1/fleet/pull-object", [("content-type", "application/protobuf"), ("flwr-signature", "abc+/==")]
    )
    length, type_byte = struct.unpack(">IB", frame[:5])
    assert type_byte == FrameType.REQUEST_HEAD and length == len(frame) - 5
    head = frames.decode_request_head(frame[5:])
    assert head == RequestHead(
        "POST", "/v1/fleet/pull-object", (("content-type", "application/protobuf"), ("flwr-signature", "abc+/=="))
    )


def test_response_head_round_trip():
    frame = frames.encode_response_head(401, [("content-type", "application/json")])
    assert frames.decode_response_head(frame[5:]) == ResponseHead(401, (("content-type", "application/json"),))


def test_body_frame_plain_when_lz4_does_not_shrink():
    data = os.urandom(10_000)  # incompressible
    frame = frames.encode_body_chunk(data)
    assert frame[4] == FrameType.BODY  # no LZ4 flag
    assert frames.decode_body(frame[5:], compressed=False) == data


def test_body_frame_compressed_only_when_smaller():
    data = b"\x00" * 100_000  # a fresh LoRA B matrix compresses enormously
    frame = frames.encode_body_chunk(data)
    assert frame[4] == FrameType.BODY | frames.FLAG_LZ4
    assert len(frame) < 1000
    assert frames.decode_body(frame[5:], compressed=True) == data
    tiny = b"\x00" * 100  # below the threshold: framing overhead would win
    assert frames.encode_body_chunk(tiny)[4] == FrameType.BODY


def test_end_frame():
    frame = frames.encode_end()
    assert frame == b"\x00\x00\x00\x00" + bytes([FrameType.END])
    assert frames.decode_end(b"") == MessageEnd()
    with pytest.raises(FrameError) as err:
        frames.decode_end(b"x")
    assert err.value.code is ErrorCode.MALFORMED


def test_error_frame_round_trip_and_truncation_keeps_utf8_valid():
    frame = frames.encode_error(ErrorCode.PATH_NOT_ALLOWED, "nope: /v1/control")
    assert frames.decode_error(frame[5:]) == PeerError(ErrorCode.PATH_NOT_ALLOWED, "nope: /v1/control")
    long = frames.encode_error(ErrorCode.INTERNAL, "é" * 5000, Limits(max_error_message=101))
    decoded = frames.decode_error(long[5:])
    assert len(decoded.message.encode()) <= 101 and set(decoded.message) == {"é"}


# --- whole messages, and the stream state machine ------------------------------------------


@pytest.mark.parametrize("step", [1, 7, 4096, None])
def test_request_decodes_identically_at_any_feed_size(step):
    body = os.urandom(300_000) + b"\x00" * 300_000  # several chunks, some compressed
    data = b"".join(frames.encode_request("POST", "/v1/fleet/push-object", [("a", "b")], body))
    decoder, events = decode_all(data, "request", step=step)
    assert events[0] == RequestHead("POST", "/v1/fleet/push-object", (("a", "b"),))
    assert isinstance(events[-1], MessageEnd)
    assert b"".join(e.data for e in events if isinstance(e, BodyChunk)) == body
    assert decoder.complete and decoder.body_bytes == len(body)
    decoder.end_of_stream()  # complete: no error


def test_response_decodes_and_empty_body_has_no_body_frames():
    data = b"".join(frames.encode_response(204, [], b""))
    decoder, events = decode_all(data, "response")
    assert events == [ResponseHead(204, ()), MessageEnd()]


def test_peer_error_accepted_anywhere_and_ends_message():
    data = frames.encode_response_head(200) + frames.encode_body_chunk(b"partial") + frames.encode_error(9, "busy")
    decoder, events = decode_all(data, "response")
    assert events[-1] == PeerError(9, "busy") and decoder.complete


def test_frames_after_end_are_rejected():
    data = b"".join(frames.encode_response(200, [], b"x")) + frames.encode_body_chunk(b"more")
    with pytest.raises(FrameError) as err:
        decode_all(data, "response")
    assert err.value.code is ErrorCode.UNEXPECTED_FRAME


@pytest.mark.parametrize(
    "first", [frames.encode_body_chunk(b"x"), frames.encode_end(), frames.encode_response_head(200)]
)
def test_request_must_start_with_request_head(first):
    with pytest.raises(FrameError) as err:
        decode_all(first, "request")
    assert err.value.code is ErrorCode.UNEXPECTED_FRAME


def test_second_head_inside_body_is_rejected():
    data = frames.encode_request_head("POST", "/v1/fleet/x") + frames.encode_request_head("POST", "/v1/fleet/y")
    with pytest.raises(FrameError) as err:
        decode_all(data, "request")
    assert err.value.code is ErrorCode.UNEXPECTED_FRAME


def test_stream_ending_mid_message_is_truncated():
    data = frames.encode_request_head("POST", "/v1/fleet/x") + frames.encode_body_chunk(b"abc")
    decoder, _ = decode_all(data, "request")
    with pytest.raises(FrameError) as err:
        decoder.end_of_stream()
    assert err.value.code is ErrorCode.TRUNCATED
    half = StreamDecoder("request")
    half.feed(frames.encode_end()[:3])  # a partial frame header
    with pytest.raises(FrameError):
        half.end_of_stream()


def test_decoder_stays_failed_after_an_error():
    decoder = StreamDecoder("request")
    with pytest.raises(FrameError):
        decoder.feed(raw_frame(0x55, b""))
    with pytest.raises(FrameError):
        decoder.feed(frames.encode_request_head("POST", "/v1/fleet/x"))


# --- limits, checked before allocation -------------------------------------------------------


def test_declared_4gb_frame_rejected_from_header_alone():
    decoder = StreamDecoder("request")
    with pytest.raises(FrameError) as err:
        decoder.feed(struct.pack(">IB", 0xFFFFFFFF, FrameType.BODY))  # 5 bytes, nothing else
    assert err.value.code is ErrorCode.FRAME_TOO_LARGE
    assert "4294967295" in err.value.message


@pytest.mark.parametrize(
    "frame_type,limit_field", [(FrameType.REQUEST_HEAD, "max_head_bytes"), (FrameType.BODY, "max_frame_payload")]
)
def test_each_frame_type_has_its_length_limit(frame_type, limit_field):
    limits = Limits(max_frame_payload=1000, max_head_bytes=100)
    too_big = getattr(limits, limit_field) + 1
    decoder = StreamDecoder("request", limits)
    if frame_type is FrameType.BODY:
        decoder.feed(frames.encode_request_head("POST", "/v1/fleet/x", limits=limits))
    with pytest.raises(FrameError) as err:
        decoder.feed(struct.pack(">IB", too_big, frame_type))
    assert err.value.code is ErrorCode.FRAME_TOO_LARGE


def test_end_frame_with_declared_payload_is_rejected():
    decoder = StreamDecoder("request")
    decoder.feed(frames.encode_request_head("POST", "/v1/fleet/x"))
    with pytest.raises(FrameError) as err:
        decoder.feed(struct.pack(">IB", 1, FrameType.END))
    assert err.value.code is ErrorCode.FRAME_TOO_LARGE


def test_lz4_declaring_more_than_the_frame_limit_is_refused_before_inflating():
    limits = Limits(max_frame_payload=64 * 1024)
    packed = lz4.block.compress(b"\x00" * 1_000_000, store_size=False)
    payload = (1_000_000).to_bytes(4, "big") + packed  # small on the wire, 1 MB inflated
    with pytest.raises(FrameError) as err:
        frames.decode_body(payload, compressed=True, limits=limits)
    assert err.value.code is ErrorCode.FRAME_TOO_LARGE


def test_lz4_inflating_past_its_declared_size_is_refused():
    packed = lz4.block.compress(b"\x00" * 500_000, store_size=False)
    payload = (1000).to_bytes(4, "big") + packed  # lies: declares 1000 bytes
    with pytest.raises(FrameError) as err:
        frames.decode_body(payload, compressed=True)
    assert err.value.code is ErrorCode.MALFORMED


def test_lz4_inflating_to_less_than_declared_is_refused():
    payload = (5000).to_bytes(4, "big") + lz4.block.compress(b"abc" * 100, store_size=False)
    with pytest.raises(FrameError):
        frames.decode_body(payload, compressed=True)


def test_corrupt_lz4_is_malformed():
    with pytest.raises(FrameError) as err:
        frames.decode_body((100).to_bytes(4, "big") + b"\xff" * 20, compressed=True)
    assert err.value.code is ErrorCode.MALFORMED


def test_total_body_limit_across_frames():
    limits = Limits(max_frame_payload=1024, max_body=3000, max_head_bytes=512)
    decoder = StreamDecoder("request", limits)
    decoder.feed(frames.encode_request_head("POST", "/v1/fleet/x", limits=limits))
    decoder.feed(frames.encode_body_chunk(os.urandom(1024)) * 2)
    with pytest.raises(FrameError) as err:
        decoder.feed(frames.encode_body_chunk(os.urandom(1000)))
    assert err.value.code is ErrorCode.BODY_TOO_LARGE
    # the same holds for a compressed frame, checked on its declared size before inflating
    decoder = StreamDecoder("request", limits)
    decoder.feed(frames.encode_request_head("POST", "/v1/fleet/x", limits=limits))
    decoder.feed(frames.encode_body_chunk(os.urandom(1024)) * 2)
    with pytest.raises(FrameError) as err:
        decoder.feed(frames.encode_body_chunk(b"\x00" * 1000))
    assert err.value.code is ErrorCode.BODY_TOO_LARGE


def test_header_count_and_encoder_side_limits():
    limits = Limits(max_headers=2)
    with pytest.raises(FrameError):
        frames.encode_request_head("POST", "/v1/fleet/x", [("a", "1"), ("b", "2"), ("c", "3")], limits)
    payload = frames.encode_request_head("POST", "/v1/fleet/x", [("a", "1"), ("b", "2"), ("c", "3")])[5:]
    with pytest.raises(FrameError) as err:
        frames.decode_request_head(payload, limits)
    assert err.value.code is ErrorCode.MALFORMED
    with pytest.raises(FrameError) as err:
        frames.encode_request("POST", "/v1/fleet/x", [], b"x" * 11, limits=Limits(max_body=10))
    assert err.value.code is ErrorCode.BODY_TOO_LARGE


# --- malformed content ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # nothing at all
        b"\x04POST",  # path length missing
        b"\x04POST\x00\x05/v1",  # path shorter than declared
        b"\x04post\x00\x02/x\x00\x00",  # lower-case method
        b"\x04POST\x00\x02xx\x00\x00",  # path without leading slash
        b"\x04POST\x00\x03/\x01x\x00\x00",  # control character in path
        b"\x04POST\x00\x02/x\x00\x01\x01A\x00\x01v",  # upper-case header name
        b"\x04POST\x00\x02/x\x00\x01\x01a\x00\x01\n",  # newline in header value
        b"\x04POST\x00\x02/x\x00\x01\x01a\x00\x05v",  # header value runs past the end
        b"\x04POST\x00\x02/x\x00\x00trailing",  # trailing bytes
        b"\x04P\xd8ST\x00\x02/x\x00\x00",  # non-ASCII method
    ],
)
def test_malformed_request_heads(payload):
    with pytest.raises(FrameError) as err:
        frames.decode_request_head(payload)
    assert err.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\x00\x63\x00\x00", b"\x02\x58\x00\x00", b"\x00\xc8\x00"])
def test_malformed_response_heads(payload):
    with pytest.raises(FrameError):
        frames.decode_response_head(payload)


def test_unknown_frame_type_rejected_from_header_alone():
    decoder = StreamDecoder("request")
    with pytest.raises(FrameError) as err:
        decoder.feed(struct.pack(">IB", 10, 0x33))
    assert err.value.code is ErrorCode.UNKNOWN_FRAME_TYPE


def test_lz4_flag_only_valid_on_body():
    with pytest.raises(FrameError) as err:
        decode_all(raw_frame(FrameType.REQUEST_HEAD | frames.FLAG_LZ4, b"x"))
    assert err.value.code is ErrorCode.MALFORMED


def test_encoder_refuses_what_the_decoder_would_refuse():
    for method, path, headers in [
        ("post", "/x", []),
        ("POST", "x", []),
        ("POST", "/x y", []),
        ("POST", "/x", [("Bad Name", "v")]),
        ("POST", "/x", [("a", "\r\n")]),
    ]:
        with pytest.raises(FrameError):
            frames.encode_request_head(method, path, headers)
    with pytest.raises(FrameError):
        frames.encode_response_head(99)


def test_limits_reject_impossible_settings():
    with pytest.raises(ValueError):
        Limits(max_frame_payload=100, max_head_bytes=200)
    with pytest.raises(ValueError):
        StreamDecoder("sideways")


# --- fuzz ----------------------------------------------------------------------------------

FUZZ_LIMITS = Limits(max_frame_payload=4096, max_body=16384, max_headers=8, max_head_bytes=1024)


@st.composite
def frame_streams(draw):
    """Mostly-valid frame sequences with mutations: good coverage of deep decoder states."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["req", "resp", "body", "zbody", "end", "err", "raw"]))
        if kind == "req":
            parts.append(frames.encode_request_head("POST", "/v1/fleet/" + draw(st.text("abc-", max_size=8))))
        elif kind == "resp":
            parts.append(frames.encode_response_head(draw(st.integers(100, 599))))
        elif kind == "body":
            parts.append(frames.encode_body_chunk(draw(st.binary(max_size=600)), compress=False))
        elif kind == "zbody":
            parts.append(frames.encode_body_chunk(b"\x00" * draw(st.integers(0, 5000))))
        elif kind == "end":
            parts.append(frames.encode_end())
        elif kind == "err":
            parts.append(frames.encode_error(draw(st.integers(0, 65535)), draw(st.text(max_size=20))))
        else:
            parts.append(
                raw_frame(
                    draw(st.integers(0, 255)),
                    draw(st.binary(max_size=40)),
                    draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
                )
            )
    data = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 3))):  # flip a few bytes
        if data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(frame_streams(), st.binary(max_size=2000)),
    expect=st.sampled_from(["request", "response"]),
    step=st.integers(1, 64),
)
def test_fuzz_decoder_only_returns_events_or_raises_frame_error(data, expect, step):
    decoder = StreamDecoder(expect, FUZZ_LIMITS)
    body = 0
    try:
        for i in range(0, len(data), step):
            for event in decoder.feed(data[i : i + step]):
                if isinstance(event, BodyChunk):
                    body += len(event.data)
                    assert len(event.data) <= FUZZ_LIMITS.max_frame_payload
        decoder.end_of_stream()
    except FrameError as exc:
        assert isinstance(exc.code, ErrorCode) and exc.message
    assert body <= FUZZ_LIMITS.max_body
    assert len(decoder._buffer) <= FUZZ_LIMITS.max_frame_payload + 4 + 5 + step


@settings(max_examples=100, deadline=None)
@given(
    body=st.binary(max_size=20_000) | st.builds(lambda n: b"\x00" * n, st.integers(0, 60_000)),
    headers=st.lists(
        st.tuples(
            st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True), st.from_regex(r"[ -~]{0,20}", fullmatch=True)
        ),
        max_size=5,
    ),
    step=st.integers(1, 5000),
)
def test_fuzz_round_trip(body, headers, step):
    data = b"".join(frames.encode_response(200, headers, body))
    _, events = decode_all(data, "response", step=step)
    assert events[0] == ResponseHead(200, tuple(headers))
    assert b"".join(e.data for e in events if isinstance(e, BodyChunk)) == body

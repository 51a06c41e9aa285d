"""The RFC 6455 engine against well-formed and hostile clients: every rule at the top of
dom0/webui/websocket.py, and byte streams made by hypothesis, which never raise."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dom0.webui import websocket as ws
from tests.webui.ws_kit import client_frame, close_code, server_frames

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def feed(conn, data, chunk=None):
    events = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        events += conn.receive(data[i:i + step])
    return events


def failed_with(data, code, max_message=ws.DEFAULT_MAX_MESSAGE):
    conn = ws.Connection(max_message)
    events = feed(conn, data)
    assert events and events[-1] == ws.Closed(code, events[-1].reason), events
    frames = server_frames(conn.data_to_send())
    assert frames[-1][1] == CLOSE and close_code(frames[-1][2]) == code
    assert conn.state is ws.State.CLOSED
    return conn


# -- the handshake ---------------------------------------------------------------------------------

GOOD_HEAD = {"Host": "127.0.0.1:8080", "Upgrade": "websocket", "Connection": "keep-alive, Upgrade",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


def test_handshake_answers_the_rfc_example():
    headers = dict(ws.handshake("GET", GOOD_HEAD))
    assert headers["Sec-WebSocket-Accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="    # RFC 6455 1.3
    assert headers["Upgrade"] == "websocket"


@pytest.mark.parametrize("change, status", [
    ({"Upgrade": "h2c"}, 400),
    ({"Connection": "keep-alive"}, 400),
    ({"Sec-WebSocket-Version": "8"}, 426),
    ({"Sec-WebSocket-Key": "short"}, 400),
    ({"Sec-WebSocket-Key": "!!!!" * 6}, 400),
    ({"Sec-WebSocket-Key": "ü" * 24}, 400),
    ({"Sec-WebSocket-Key": ""}, 400),
])
def test_handshake_refuses_what_is_not_an_upgrade(change, status):
    with pytest.raises(ws.HandshakeError) as e:
        ws.handshake("GET", {**GOOD_HEAD, **change})
    assert e.value.status == status
    if status == 426:
        assert ("Sec-WebSocket-Version", "13") in e.value.headers


def test_handshake_needs_get():
    with pytest.raises(ws.HandshakeError) as e:
        ws.handshake("POST", GOOD_HEAD)
    assert e.value.status == 405


# -- messages --------------------------------------------------------------------------------------

def test_text_binary_and_fragments():
    conn = ws.Connection()
    data = (client_frame(TEXT, "héllo".encode()) + client_frame(BINARY, b"\x00\xff")
            + client_frame(TEXT, "é".encode()[:1], fin=False) + client_frame(PING, b"p")
            + client_frame(CONT, "é".encode()[1:] + b"!", fin=True))
    assert feed(conn, data, chunk=3) == [ws.TextMessage("héllo"), ws.BinaryMessage(b"\x00\xff"),
                                         ws.TextMessage("é!")]
    assert server_frames(conn.data_to_send()) == [(True, PONG, b"p")]


def test_peer_close_is_echoed_and_ends():
    conn = ws.Connection()
    events = feed(conn, client_frame(CLOSE, struct.pack("!H", 1001) + b"bye") + client_frame(TEXT, b"late"))
    assert events == [ws.Closed(1001, "bye")]
    assert server_frames(conn.data_to_send()) == [(True, CLOSE, struct.pack("!H", 1001))]
    assert conn.state is ws.State.CLOSED


def test_empty_close_is_answered_empty():
    conn = ws.Connection()
    assert feed(conn, client_frame(CLOSE, b"")) == [ws.Closed(ws.CLOSE_NO_STATUS, "")]
    assert server_frames(conn.data_to_send()) == [(True, CLOSE, b"")]


def test_our_close_waits_for_the_peers_and_drops_data_meanwhile():
    conn = ws.Connection()
    conn.close(4000, "the guest's console closed")
    assert conn.state is ws.State.CLOSING
    (frame,) = server_frames(conn.data_to_send())
    assert close_code(frame[2]) == 4000 and frame[2][2:] == b"the guest's console closed"
    conn.send_text("not sent")
    assert feed(conn, client_frame(TEXT, b"ignored") + client_frame(PING, b"x")) == []
    assert conn.data_to_send() == b""
    assert feed(conn, client_frame(CLOSE, struct.pack("!H", 4000))) == [ws.Closed(4000, "")]
    assert conn.state is ws.State.CLOSED and conn.data_to_send() == b""


def test_long_reasons_fit_a_control_frame():
    conn = ws.Connection()
    conn.close(1000, "é" * 200)
    (frame,) = server_frames(conn.data_to_send())
    assert len(frame[2]) <= 125
    frame[2][2:].decode("utf-8")


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_server_frame_lengths(n):
    conn = ws.Connection()
    conn.send_binary(b"x" * n)
    assert server_frames(conn.data_to_send()) == [(True, BINARY, b"x" * n)]


# -- every rule, broken ---------------------------------------------------------------------------

@pytest.mark.parametrize("data, code", [
    (client_frame(TEXT, b"hi", masked=False), 1002),
    (client_frame(TEXT, b"hi", rsv=1), 1002),
    (client_frame(0x3, b"hi"), 1002),
    (client_frame(0xB, b""), 1002),
    (client_frame(PING, b"x", fin=False), 1002),
    (client_frame(PING, b"x" * 126), 1002),
    (client_frame(CONT, b"x"), 1002),
    (client_frame(TEXT, b"a", fin=False) + client_frame(TEXT, b"b"), 1002),
    (client_frame(TEXT, b"x" * 10, length_form="16"), 1002),
    (client_frame(TEXT, b"x" * 200, length_form="64"), 1002),
    (client_frame(TEXT, b"\xff"), 1007),
    (client_frame(TEXT, b"\xc3", fin=False) + client_frame(CONT, b"A"), 1007),
    (client_frame(CLOSE, b"\x03"), 1002),
    (client_frame(CLOSE, struct.pack("!H", 1005)), 1002),
    (client_frame(CLOSE, struct.pack("!H", 999)), 1002),
    (client_frame(CLOSE, struct.pack("!H", 5000)), 1002),
    (client_frame(CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
])
def test_broken_rule_fails_the_connection(data, code):
    failed_with(data, code)


def test_top_bit_of_a_64_bit_length():
    failed_with(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 63) + b"\0" * 4, 1002)


def test_too_big_fails_before_the_payload_arrives():
    conn = ws.Connection(max_message=1000)
    head = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 40)
    assert feed(conn, head)[-1].code == ws.CLOSE_TOO_BIG     # only the header: nothing buffered


def test_too_big_counts_every_fragment():
    failed_with(client_frame(BINARY, b"x" * 600, fin=False) + client_frame(CONT, b"x" * 600), 1009,
                max_message=1000)


def test_nothing_after_a_failure():
    conn = failed_with(client_frame(TEXT, b"x", masked=False), 1002)
    assert conn.receive(client_frame(TEXT, b"more")) == []


# -- hostile streams -------------------------------------------------------------------------------

frames = st.builds(
    client_frame,
    opcode=st.sampled_from([TEXT, BINARY, CONT, CLOSE, PING, PONG, 0x3, 0xF]),
    payload=st.binary(max_size=300),
    fin=st.booleans(),
    masked=st.sampled_from([True, True, True, False]),
    rsv=st.sampled_from([0, 0, 0, 4]),
    length_form=st.sampled_from(["short", "short", "16", "64"]),
)
streams = st.lists(frames | st.binary(max_size=40), max_size=12).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(streams, st.integers(1, 64), st.integers(0, 2000))
def test_hostile_streams_never_raise_and_chunking_does_not_matter(data, chunk, max_message):
    whole, pieces = ws.Connection(max_message), ws.Connection(max_message)
    events = feed(whole, data)
    assert feed(pieces, data, chunk) == events
    assert whole.data_to_send() == pieces.data_to_send()
    closes = [e for e in events if isinstance(e, ws.Closed)]
    assert len(closes) <= 1 and (not closes or events[-1] is closes[0])
    for e in events:
        if isinstance(e, ws.BinaryMessage):
            assert len(e.data) <= max_message
    server_frames(whole.data_to_send())     # what it answered is whole, unmasked frames


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=50).map(lambda t: (TEXT, t.encode())),
                          st.binary(max_size=50).map(lambda b: (BINARY, b))), max_size=8),
       st.integers(1, 4), st.integers(1, 17))
def test_fragmented_messages_with_pings_between_arrive_whole(messages, pieces, chunk):
    data, expected = b"", []
    for opcode, payload in messages:
        cut = [payload[i * len(payload) // pieces:(i + 1) * len(payload) // pieces] for i in range(pieces)]
        for i, part in enumerate(cut):
            data += client_frame(opcode if i == 0 else CONT, part, fin=i == pieces - 1)
            if i < pieces - 1:
                data += client_frame(PING, b"k")
        expected.append(ws.TextMessage(payload.decode()) if opcode == TEXT else ws.BinaryMessage(payload))
    conn = ws.Connection()
    assert feed(conn, data, chunk) == expected
    pongs = server_frames(conn.data_to_send())
    assert pongs == [(True, PONG, b"k")] * (len(messages) * (pieces - 1))

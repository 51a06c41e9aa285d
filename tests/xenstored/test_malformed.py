"""Hostile and malformed input: always an error reply or a broken
connection, never an exception."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from abi.io import xs_wire as wire
from dom0.xenstored import XenStore

from .xenstored_kit import message, parse_messages


def test_unknown_and_reply_only_types_are_enosys(dom0):
    for msg_type in (20, 23, 0xFFFF, 0xFFFFFFFF, wire.XS_WATCH_EVENT, wire.XS_ERROR):
        assert dom0.raw(msg_type, b"x\0") == (wire.XS_ERROR, b"ENOSYS\0")


def test_missing_nul_and_extra_strings(dom0):
    assert dom0.raw(wire.XS_READ, b"/tool") == (wire.XS_ERROR, b"EINVAL\0")
    assert dom0.raw(wire.XS_READ, b"/tool\0extra\0") == (wire.XS_ERROR, b"EINVAL\0")
    assert dom0.raw(wire.XS_READ, b"") == (wire.XS_ERROR, b"EINVAL\0")
    assert dom0.raw(wire.XS_WRITE, b"/no-separator") == (wire.XS_ERROR, b"EINVAL\0")


def test_non_utf8_paths_tokens_values(dom0):
    assert dom0.raw(wire.XS_READ, b"/\xff\xfe\0") == (wire.XS_ERROR, b"EINVAL\0")
    dom0.write("/bin", b"\xff\xfe\x00\x80")
    assert dom0.read("/bin") == b"\xff\xfe\x00\x80"
    dom0.ok(wire.XS_WATCH, "/bin", b"\xff\xfe")
    assert dom0.take_events() == [(b"/bin", b"\xff\xfe")]


def test_unknown_transaction_id(dom0):
    assert dom0.raw(wire.XS_WRITE, b"/x\0v", tx=12345) == (wire.XS_ERROR, b"ENOENT\0")


def test_oversized_length_breaks_the_connection(engine):
    conn = engine.open_connection(domid=5)
    engine.feed(conn, struct.pack("<4I", wire.XS_READ, 1, 0, wire.XENSTORE_PAYLOAD_MAX + 1))
    assert engine.connections[conn].broken == wire.XENSTORE_ERROR_PROTO
    engine.feed(conn, message(wire.XS_READ, b"/\0"))  # ignored from now on
    assert engine.data_to_send(conn) == b""


def test_payload_max_exactly_is_accepted(dom0):
    value = b"v" * (wire.XENSTORE_PAYLOAD_MAX - len(b"/max\0"))
    dom0.write("/max", value)
    assert dom0.read("/max") == value


def test_byte_by_byte_delivery(engine):
    conn = engine.open_connection()
    for byte in message(wire.XS_READ, b"/tool\0", req_id=9):
        engine.feed(conn, bytes([byte]))
    assert parse_messages(engine.data_to_send(conn)) == [(wire.XS_READ, 9, 0, b"")]


_TYPES = st.one_of(st.integers(0, 24), st.integers(0, 0xFFFFFFFF))
_PATHS = st.sampled_from([b"/a", b"/a/b", b"a", b"/local/domain/3/x", b"@releaseDomain",
                          b"/", b"", b"/a/", b"//", b"\xff"])
_ARGS = st.lists(st.one_of(_PATHS, st.binary(max_size=12), st.sampled_from(
    [b"T", b"F", b"r3", b"b0", b"n5", b"0", b"3", b"print", b"quota"])), max_size=4)


@st.composite
def requests(draw):
    args = draw(_ARGS)
    payload = b"\0".join(args) + draw(st.sampled_from([b"", b"\0", b"\0\0"]))
    return message(draw(_TYPES), payload, draw(st.integers(0, 5)), draw(st.integers(0, 3)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 3, 4]), requests()), max_size=25))
def test_random_request_streams_never_raise(stream):
    engine = XenStore()
    engine.introduce_domain(3, port=1)
    engine.introduce_domain(4, port=1)
    conns = {0: engine.open_connection(0), 3: engine.domains[3].conn_id,
             4: engine.domains[4].conn_id}
    sent = answered = 0
    for domid, data in stream:
        conn = conns[domid]
        sent += conn in engine.connections  # XS_RELEASE may have ended it
        engine.feed(conn, data)
        for m_type, *_ in parse_messages(engine.data_to_send(conn)):
            answered += m_type != wire.XS_WATCH_EVENT
    assert answered == sent  # one reply per request, always
    assert engine.store.inconsistencies() == []


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_random_bytes_never_raise(chunks):
    engine = XenStore()
    conn = engine.open_connection(domid=7)
    for chunk in chunks:
        engine.feed(conn, chunk)
        engine.data_to_send(conn, 100)

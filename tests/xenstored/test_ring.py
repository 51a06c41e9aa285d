"""The ring transport against a simulated guest, including hostile ones."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi.io import xs_wire as wire
from dom0.xenstored import XenStore
from dom0.xenstored.ring import RingServer

from .xenstored_kit import SIZE, Client, Guest, message, parse_messages


@pytest.fixture
def setup():
    engine = XenStore()
    rings = RingServer(engine)
    page = memoryview(bytearray(4096))
    kicks = []
    toolstack = Client(engine)
    toolstack.ok(wire.XS_MKDIR, "/local/domain/5")
    toolstack.ok(wire.XS_SET_PERMS, "/local/domain/5", "n5")
    rings.introduce(5, page, lambda: kicks.append(1), port=3)
    return engine, rings, Guest(page), kicks


def converse(rings, guest, data: bytes, domid=5, rounds=50) -> bytes:
    """Send ``data`` through the ring, kicking the server as a guest would."""
    received = b""
    for _ in range(rounds):
        data = data[guest.send_some(data):]
        rings.kick(domid)
        received += guest.receive()
        if not data and not rings.engine.has_output(rings.rings[domid].conn_id):
            rings.kick(domid)
            received += guest.receive()
            break
    return received


def test_page_is_initialised(setup):
    _, _, guest, kicks = setup
    assert guest.load(wire.XENSTORE_SERVER_FEATURES_OFFSET) == 3
    assert guest.load(wire.XENSTORE_CONNECTION_OFFSET) == wire.XENSTORE_CONNECTED
    assert kicks


def test_round_trip(setup):
    engine, rings, guest, kicks = setup
    Client(engine).write("/local/domain/5/name", "guest")
    reply = converse(rings, guest, message(wire.XS_READ, b"name\0", req_id=4))
    assert parse_messages(reply) == [(wire.XS_READ, 4, 0, b"guest")]


def test_messages_larger_than_the_ring_both_ways(setup):
    engine, rings, guest, _ = setup
    Client(engine).ok(wire.XS_SET_PERMS, "/", "b5")  # let the guest write big nodes
    engine.quotas.node_size = 10_000
    value = bytes(range(256)) * 15
    replies = converse(rings, guest, message(wire.XS_WRITE, b"/big\0" + value, 1)
                       + message(wire.XS_READ, b"/big\0", 2))
    assert parse_messages(replies) == [(wire.XS_WRITE, 1, 0, b"OK\0"),
                                       (wire.XS_READ, 2, 0, value)]


def test_index_wraparound(setup):
    engine, rings, guest, _ = setup
    for offset in (wire.XENSTORE_REQ_CONS_OFFSET, wire.XENSTORE_REQ_PROD_OFFSET,
                   wire.XENSTORE_RSP_CONS_OFFSET, wire.XENSTORE_RSP_PROD_OFFSET):
        guest.store(offset, 0xFFFFFFF0)
    replies = converse(rings, guest, message(wire.XS_GET_DOMAIN_PATH, b"5\0", 1) * 3)
    assert [m[3] for m in parse_messages(replies)] == [b"/local/domain/5\0"] * 3


def test_watch_events_reach_the_guest_on_flush(setup):
    engine, rings, guest, kicks = setup
    converse(rings, guest, message(wire.XS_WATCH, b"data\0tok\0", 1))
    Client(engine).write("/local/domain/5/data/x", "1")
    kicks.clear()
    rings.flush(engine.take_dirty())
    assert kicks
    assert parse_messages(guest.receive()) == [(wire.XS_WATCH_EVENT, 0, 0, b"data/x\0tok\0")]


def test_bad_indexes_mark_the_connection_broken(setup):
    engine, rings, guest, _ = setup
    guest.store(wire.XENSTORE_REQ_PROD_OFFSET, SIZE + 1)
    rings.kick(5)
    assert guest.load(wire.XENSTORE_ERROR_OFFSET) == wire.XENSTORE_ERROR_RINGIDX
    guest.store(wire.XENSTORE_REQ_PROD_OFFSET, 0)
    assert converse(rings, guest, message(wire.XS_READ, b"/\0", 1), rounds=3) == b""


def test_oversized_request_reports_proto_error(setup):
    engine, rings, guest, _ = setup
    guest.send_some(struct.pack("<4I", wire.XS_WRITE, 1, 0, 5000))
    rings.kick(5)
    assert guest.load(wire.XENSTORE_ERROR_OFFSET) == wire.XENSTORE_ERROR_PROTO


def test_guest_requested_reconnect(setup):
    engine, rings, guest, _ = setup
    converse(rings, guest, message(wire.XS_WATCH, b"/w\0t\0", 1))
    guest.store(wire.XENSTORE_REQ_PROD_OFFSET, 99999)  # garbage, then reconnect
    rings.kick(5)
    guest.store(wire.XENSTORE_CONNECTION_OFFSET, wire.XENSTORE_RECONNECT)
    rings.kick(5)
    assert guest.load(wire.XENSTORE_CONNECTION_OFFSET) == wire.XENSTORE_CONNECTED
    assert guest.load(wire.XENSTORE_REQ_PROD_OFFSET) == 0
    assert engine.connections[rings.rings[5].conn_id].watches == []
    reply = converse(rings, guest, message(wire.XS_GET_DOMAIN_PATH, b"5\0", 2))
    assert parse_messages(reply) == [(wire.XS_GET_DOMAIN_PATH, 2, 0, b"/local/domain/5\0")]


def test_release_detaches_ring(setup):
    engine, rings, guest, _ = setup
    rings.release(5)
    assert 5 not in rings.rings and 5 not in engine.domains
    rings.kick(5)  # a late event is harmless


def test_wire_introduce_maps_through_page_mapper():
    engine = XenStore()
    page = memoryview(bytearray(4096))
    rings = RingServer(engine, page_mapper=lambda domid, gfn, port: (page, lambda: None))
    dom0 = Client(engine)
    dom0.ok(wire.XS_INTRODUCE, "6", "100", "4")
    assert 6 in rings.rings
    broken = RingServer(XenStore(), page_mapper=lambda *a: 1 / 0)
    assert Client(broken.engine).error(wire.XS_INTRODUCE, "6", "100", "4") == "EINVAL"
    assert Client(RingServer(XenStore()).engine).error(wire.XS_INTRODUCE, "6", "1", "4") == "EINVAL"


def test_page_must_be_writable_and_large_enough():
    rings = RingServer(XenStore())
    with pytest.raises(ValueError):
        rings.introduce(5, memoryview(bytes(4096)), lambda: None)
    with pytest.raises(ValueError):
        rings.introduce(5, memoryview(bytearray(100)), lambda: None)


_INDEX = st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(0, 2 * SIZE),
                   st.sampled_from([0xFFFFFFFF, 0x80000000, SIZE, SIZE + 1]))
_FIELDS = [wire.XENSTORE_REQ_CONS_OFFSET, wire.XENSTORE_REQ_PROD_OFFSET,
           wire.XENSTORE_RSP_CONS_OFFSET, wire.XENSTORE_RSP_PROD_OFFSET,
           wire.XENSTORE_CONNECTION_OFFSET]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=2 * SIZE, max_size=2 * SIZE),
       st.lists(st.tuples(st.sampled_from(_FIELDS), _INDEX), max_size=12))
def test_hostile_ring_contents_never_raise(ring_bytes, scribbles):
    engine = XenStore()
    rings = RingServer(engine)
    page = memoryview(bytearray(4096))
    rings.introduce(9, page, lambda: None, port=1)
    guest = Guest(page)
    page[:2 * SIZE] = ring_bytes
    other = Client(engine)
    for field, value in scribbles:
        guest.store(field, value)
        rings.kick(9)
        other.write("/local/domain/9/poke", "x")  # output pressure via watches
        rings.flush()
    assert len(page) == 4096


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=10))
def test_random_request_bytes_through_the_ring(chunks):
    engine = XenStore()
    rings = RingServer(engine)
    page = memoryview(bytearray(4096))
    rings.introduce(9, page, lambda: None, port=1)
    guest = Guest(page)
    for chunk in chunks:
        guest.send_some(chunk)
        rings.kick(9)
        guest.receive()

"""The xenbus client against the real xenstored engine: over a Unix socket and over a ring page."""
from __future__ import annotations

import threading

import pytest

from dom0.xenstored import XenStore
from dom0.xenstored.ring import RingServer
from dom0.xenstored.unix_socket import SocketServer
from pvguest.xenbus import RingTransport, SocketTransport, Xenbus, XenbusError


@pytest.fixture
def xenstored(tmp_path):
    engine = XenStore()
    rings = RingServer(engine)
    server = SocketServer(engine, str(tmp_path / "socket"), other_transports=[rings])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield engine, rings, server
    server.stop()
    thread.join(5)


def test_socket_client_reads_writes_watches_and_transactions(xenstored):
    _, _, server = xenstored
    xs = Xenbus(SocketTransport(server.path))
    xs.write("/local/domain/7/name", "guest")
    assert xs.read("/local/domain/7/name") == b"guest"
    assert xs.directory("/local/domain/7") == ["name"]
    xs.watch("/local/domain/7", "tok")
    assert xs.read_watch(5) == ("/local/domain/7", "tok")          # the initial event
    tx = xs.transaction_start()
    xs.write("/local/domain/7/memory", "4096", tx)
    xs.transaction_end(tx)
    assert xs.read_watch(5) == ("/local/domain/7/memory", "tok")
    with pytest.raises(XenbusError) as e:
        xs.read("/local/domain/7/nope")
    assert e.value.name == "ENOENT"
    assert xs.get_domain_path(7) == "/local/domain/7"


def test_ring_client_through_a_page_served_by_the_ring_transport():
    engine = XenStore()
    rings = RingServer(engine)
    page = memoryview(bytearray(4096))
    kicked = threading.Event()
    rings.introduce(5, page, lambda: None)
    stop = threading.Event()

    def xenstored_loop():       # the only thread touching the engine, as in dom0
        while not stop.is_set():
            kicked.wait(0.02)
            kicked.clear()
            rings.kick(5)
    t = threading.Thread(target=xenstored_loop, daemon=True)
    t.start()
    xs = Xenbus(RingTransport(page, kicked.set, lambda timeout: stop.wait(min(timeout, 0.005))))
    try:
        assert xs.get_domain_path(5) == "/local/domain/5"
        with pytest.raises(XenbusError) as e:
            xs.write("/local/domain/0/x", "no")                  # dom0's, not ours
        assert e.value.name == "EACCES"
        with pytest.raises(XenbusError) as e:
            xs.read("/local/domain/5/nothing")
        assert e.value.name in ("ENOENT", "EACCES")
        big = "v" * 3000                                         # more than one ring's worth in flight
        with pytest.raises(XenbusError):
            xs.write("/local/domain/5/big", big)                 # home not created by a toolstack: refused
    finally:
        stop.set()
        t.join(5)

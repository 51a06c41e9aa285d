"""SocketServer driven in-process, together with a guest ring."""

import socket
import struct

from abi.io import xs_wire as wire
from dom0.xenstored import LocalClient, XenStore
from dom0.xenstored.core import parse_messages
from dom0.xenstored.ring import RingServer
from dom0.xenstored.unix_socket import SocketServer

from .xenstored_kit import Guest, message


def _connect(server):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(server.path)
    sock.settimeout(5)
    server.poll(0.1)  # accept
    return sock


def _exchange(server, sock, data):
    sock.sendall(data)
    received = b""
    for _ in range(50):
        server.poll(0.05)
        try:
            sock.settimeout(0.05)
            chunk = sock.recv(65536)
        except socket.timeout:
            chunk = None
        if chunk == b"":
            return received, True
        received += chunk or b""
        if received and parse_messages(received):
            return received, False
    return received, False


def test_socket_request_reaches_guest_watch(tmp_path):
    engine = XenStore()
    rings = RingServer(engine)
    server = SocketServer(engine, str(tmp_path / "xs" / "socket"), other_transports=[rings])
    try:
        toolstack = LocalClient(engine)
        toolstack.mkdir("/local/domain/4")
        toolstack.set_perms("/local/domain/4", ["n4"])
        page = memoryview(bytearray(4096))
        rings.introduce(4, page, lambda: None, port=2)
        guest = Guest(page)
        guest.send_some(message(wire.XS_WATCH, b"control\0c\0", 1))
        rings.kick(4)
        guest.receive()

        sock = _connect(server)
        reply, closed = _exchange(server, sock, message(wire.XS_WRITE,
                                                         b"/local/domain/4/control/shutdown\0halt", 3))
        assert parse_messages(reply) == [(wire.XS_WRITE, 3, 0, b"OK\0")] and not closed
        assert parse_messages(guest.receive()) == [
            (wire.XS_WATCH_EVENT, 0, 0, b"control/shutdown\0c\0")]
        sock.close()
    finally:
        server.close()
    assert not (tmp_path / "xs" / "socket").exists()


def test_oversized_header_closes_socket(tmp_path):
    server = SocketServer(XenStore(), str(tmp_path / "socket"))
    try:
        sock = _connect(server)
        _, closed = _exchange(server, sock, struct.pack("<4I", wire.XS_READ, 1, 0, 100000))
        assert closed
        assert not server.clients
    finally:
        server.close()


def test_client_disconnect_drops_connection(tmp_path):
    engine = XenStore()
    server = SocketServer(engine, str(tmp_path / "socket"))
    try:
        sock = _connect(server)
        _exchange(server, sock, message(wire.XS_WATCH, b"/a\0t\0", 1))
        sock.close()
        server.poll(0.1)
        assert not server.clients and len(engine.connections) == 0
        LocalClient(engine).write("/a", "x")  # no stale watcher left behind
    finally:
        server.close()

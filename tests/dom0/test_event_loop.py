"""dom0's one event loop (dom0.xenstored.unix_socket.SocketServer) in-process: a failing
callback ends only its own watch, and a xenstore socket client that never reads is bounded."""
from __future__ import annotations

import socket
import struct

from abi.io import xs_wire as wire
from dom0.toolstack.api import REQUESTS, parse_request
from dom0.xenstored import LocalClient, XenStore
from dom0.xenstored.unix_socket import _MAX_BACKLOG, SocketServer


def _message(msg_type: int, payload: bytes, req_id: int = 1) -> bytes:
    return wire.xsd_sockmsg.build(dict(type=msg_type, req_id=req_id, tx_id=0, len=len(payload))) + payload


def _read_reply(server: SocketServer, sock: socket.socket) -> bytes:
    buf = b""
    sock.settimeout(0.05)
    for _ in range(100):
        server.poll(0.02)
        try:
            buf += sock.recv(65536)
        except TimeoutError:
            pass
        if len(buf) >= 16 and len(buf) >= 16 + struct.unpack_from("<I", buf, 12)[0]:
            return buf
    raise AssertionError(f"no reply: {buf!r}")


def test_a_failing_callback_ends_its_own_watch_not_the_loop(tmp_path):
    engine = XenStore()
    server = SocketServer(engine, str(tmp_path / "socket"))
    LocalClient(engine).write("/a", "x")
    bad_r, bad_w = socket.socketpair()
    kept_r, kept_w = socket.socketpair()
    cleaned = []
    calls = []

    def explode() -> None:
        calls.append(1)
        raise RuntimeError("a bug in one reader")
    try:
        server.add_reader(bad_r, explode)                                   # default: stop watching it
        server.add_reader(kept_r, explode, on_failure=lambda: cleaned.append(kept_r))
        bad_w.send(b"!")
        kept_w.send(b"!")
        server.poll(0.1)
        assert len(calls) == 2 and cleaned == [kept_r]
        server.poll(0.05)
        assert len(calls) == 3           # the one with on_failure is still watched; the other is not
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(server.path)
        client.sendall(_message(wire.XS_READ, b"/a\0"))
        assert _read_reply(server, client)[16:] == b"x"
        assert server.failures[explode.__qualname__] == len(calls)      # each one counted
        client.close()
    finally:
        for sock in (bad_r, bad_w, kept_r, kept_w):
            sock.close()
        server.close()


def test_a_socket_client_that_never_reads_its_watch_events_is_dropped(tmp_path):
    engine = XenStore()
    server = SocketServer(engine, str(tmp_path / "socket"))
    try:
        deaf = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deaf.connect(server.path)
        deaf.sendall(_message(wire.XS_WATCH, b"/\0t\0"))
        server.poll(0.05)
        server.poll(0.05)
        assert len(server.clients) == 1
        local = LocalClient(engine)
        name = "n" * 1800
        for i in range(2 * _MAX_BACKLOG // 1800):
            local.write(f"/{name}{i}", "")
            server.poll(0)
            if not server.clients:
                break
        assert not server.clients, "a client that reads nothing still holds its output"
        # and the next client is served as ever
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.connect(server.path)
        other.sendall(_message(wire.XS_READ, f"/{name}0\0".encode()))
        assert struct.unpack_from("<I", _read_reply(server, other))[0] == wire.XS_READ
        other.close()
        deaf.close()
    finally:
        server.close()


def test_every_toolstack_command_is_declared_for_the_socket():
    from dom0.toolstack.domains import Toolstack
    declared = set(Toolstack.commands(Toolstack.__new__(Toolstack)))
    assert declared == set(REQUESTS)
    assert parse_request(b'{"cmd": "vcpu-list", "args": {"dom": null}}') == ("vcpu-list", {})
    assert parse_request(b'{"cmd": "destroy", "args": {"dom": 3}}') == ("destroy", {"dom": 3})

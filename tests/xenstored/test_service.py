"""The engine, a guest ring and the socket served from another thread:
in-process toolstack, a guest and a socket client, all at once."""

import socket
import time

from abi.io import xs_wire as wire
from dom0.xenstored.core import parse_messages

from .xenstored_kit import Guest, XenStoreService, message


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_events_flow_between_all_parties(tmp_path):
    service = XenStoreService(str(tmp_path / "xenstored" / "socket"))
    service.start()
    try:
        tools = service.client()
        tools.mkdir("/local/domain/7")
        tools.set_perms("/local/domain/7", ["n7", "r0"])
        page = memoryview(bytearray(4096))
        kicks = []
        service.introduce(7, page, lambda: kicks.append(1), port=1)
        guest = Guest(page)
        guest.send_some(message(wire.XS_WATCH, b"control\0ctl\0", 1))
        service.kick(7)
        assert [m[0] for m in parse_messages(guest.receive())] == [wire.XS_WATCH,
                                                                   wire.XS_WATCH_EVENT]

        # A dom0 tool on the socket watches what the guest writes.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(tmp_path / "xenstored" / "socket"))
        sock.settimeout(5)
        sock.sendall(message(wire.XS_WATCH, b"/local/domain/7/data\0tool\0", 2))
        received = b""
        while len(parse_messages(received)) < 2:
            received += sock.recv(4096)

        # The in-process toolstack writes; the guest's ring gets the event
        # without anybody calling flush.
        kicks.clear()
        tools.write("/local/domain/7/control/shutdown", "poweroff")
        _wait(lambda: kicks)
        assert parse_messages(guest.receive()) == [
            (wire.XS_WATCH_EVENT, 0, 0, b"control/shutdown\0ctl\0")]

        # The guest writes; the socket tool hears about it.
        guest.send_some(message(wire.XS_WRITE, b"data/state\x004", 3))
        service.kick(7)
        received = b""
        while not parse_messages(received):
            received += sock.recv(4096)
        assert parse_messages(received) == [
            (wire.XS_WATCH_EVENT, 0, 0, b"/local/domain/7/data/state\0tool\0")]
        sock.close()
        service.release(7)
    finally:
        service.stop()
    assert not (tmp_path / "xenstored" / "socket").exists()

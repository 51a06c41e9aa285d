"""The project's guest library (pvguest.xenbus) against our xenstored, over
a ring page and over the socket."""

import pytest

from pvguest.xenbus import RingTransport, SocketTransport, Xenbus, XenbusError

from .xenstored_kit import XenStoreService


@pytest.fixture
def service(tmp_path):
    service = XenStoreService(str(tmp_path / "xenstored" / "socket"))
    service.start()
    yield service
    service.stop()


def test_guest_library_over_a_ring(service):
    tools = service.client()
    tools.mkdir("/local/domain/3")
    tools.set_perms("/local/domain/3", ["n3", "r0"])
    page = memoryview(bytearray(4096))
    service.introduce(3, page, notify=lambda: None, port=1)
    # The guest's event-channel kick reaches xenstored synchronously here.
    guest = Xenbus(RingTransport(page, notify=lambda: service.kick(3), wait=lambda t: None,
                                 poll_interval=0))
    assert guest.get_domain_path(3) == "/local/domain/3"
    guest.write("/local/domain/3/data/greeting", "hello" * 300)  # larger than the ring
    assert guest.read("/local/domain/3/data/greeting") == b"hello" * 300
    guest.watch("control", "ctl")
    assert guest.read_watch(timeout=5) == ("control", "ctl")
    tools.write("/local/domain/3/control/shutdown", "reboot")
    assert guest.read_watch(timeout=5) == ("control/shutdown", "ctl")
    tx = guest.transaction_start()
    guest.write("data/x", "1", tx)
    guest.transaction_end(tx)
    assert tools.read("/local/domain/3/data/x") == b"1"
    with pytest.raises(XenbusError) as error:
        guest.read("/local/domain/0")
    assert error.value.name == "EACCES"


def test_guest_library_over_the_socket(service, tmp_path):
    tool = Xenbus(SocketTransport(str(tmp_path / "xenstored" / "socket")))
    tool.write("/vm/1/name", "one")
    assert tool.directory("/vm/1") == ["name"]
    assert tool.get_perms("/vm/1/name") == ["n0"]
    tool.watch("/vm", "vm")
    assert tool.read_watch(timeout=5) == ("/vm", "vm")
    service.client().rm("/vm/1")
    assert tool.read_watch(timeout=5) == ("/vm/1", "vm")
    tool.transport.close()

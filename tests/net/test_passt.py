"""The passt uplink against the real passt: DHCP, a host connection through a port forward, and
the guard's drops. Frames go only between this test and a passt on a Unix socket; the one TCP
connection is the test's own, to 127.0.0.1."""
from __future__ import annotations

import selectors
import shutil
import socket
import struct
import time

import pytest

from dom0.net.bridge import Bridge
from dom0.net.checksum import fill_l4_checksum
from dom0.net.uplink import Forward, PasstUplink, UplinkError, UplinkGuard
from tests.net.kit import BROADCAST, udp_frame

pytestmark = pytest.mark.skipif(shutil.which("passt") is None, reason="passt (Debian package) is not installed")
GUEST_MAC = bytes.fromhex("00163e112233")
GUEST_IP = bytes([10, 0, 2, 15])


class GuestPort:
    """The guest's side of the bridge, played by the test."""
    name = "vif9.0"

    def __init__(self):
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)


class Loop:
    def __init__(self):
        self.selector = selectors.DefaultSelector()

    def add_reader(self, sock, callback):
        self.selector.register(sock, selectors.EVENT_READ, callback)

    def remove_reader(self, sock):
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def run_until(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for key, _ in self.selector.select(0.05):
                key.data()
            value = predicate()
            if value:
                return value
        raise AssertionError("timed out")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dhcp_discover() -> bytes:
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x1234, 0, 0x8000, bytes(4), bytes(4),
                        bytes(4), bytes(4), GUEST_MAC.ljust(16, b"\0"), b"", b"")
    options = b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\xff"
    return udp_frame(bootp + options, src=GUEST_MAC, dst=BROADCAST, sport=68, dport=67,
                     src_ip=bytes(4), dst_ip=b"\xff" * 4)


def tcp_segment(src_ip, dst_ip, sport, dport, seq, ack, flags, dst_mac, payload=b""):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0, 64, 6, 0, src_ip, dst_ip)
    from dom0.net.checksum import checksum
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return fill_l4_checksum(dst_mac + GUEST_MAC + b"\x08\x00" + ip + tcp)


@pytest.fixture
def uplink(tmp_path):
    loop = Loop()
    bridge = Bridge("br-test")
    guest = GuestPort()
    bridge.attach(guest)
    port = free_port()
    forwards = [Forward("tcp", "127.0.0.1", port, 80)]
    guard = UplinkGuard(guest.name, forwards)
    up = PasstUplink("passt-test", bridge, guard, forwards, str(tmp_path), loop.add_reader, loop.remove_reader)
    up.start()
    bridge.attach(up, guard.allow)
    yield loop, bridge, guest, up, port
    up.stop()


def test_dhcp_then_a_host_connection_through_the_forward(uplink):
    loop, bridge, guest, up, port = uplink
    bridge.input(guest.name, dhcp_discover())
    offer = loop.run_until(lambda: next((f for f in guest.frames if f[34:38] == b"\x00\x43\x00\x44"), None))
    assert offer[12:14] == b"\x08\x00"
    yiaddr = offer[42 + 16:42 + 20]
    assert yiaddr == GUEST_IP, yiaddr
    options = offer[42 + 240:]
    assert b"\x06" not in [options[i:i + 1] for i in range(0, 0)]      # (option parsing below)
    codes, i = [], 0
    while i < len(options) and options[i] != 255:
        if options[i] == 0:
            i += 1
            continue
        codes.append(options[i])
        i += 2 + options[i + 1]
    assert 6 not in codes, "passt handed out a DNS server"
    assert up.guard.allowed == 1
    # The host connects; passt brings the SYN to the guest, the guest answers through the guard.
    client = socket.socket()
    client.setblocking(False)
    client.connect_ex(("127.0.0.1", port))
    syn = loop.run_until(lambda: next((f for f in guest.frames if len(f) >= 54 and f[23] == 6
                                        and f[47] & 0x02), None))
    gw_mac, gw_ip, guest_ip = syn[6:12], syn[26:30], syn[30:34]
    sport, dport, seq = struct.unpack_from("!HHI", syn, 34)
    assert dport == 80 and guest_ip == GUEST_IP
    bridge.input(guest.name, tcp_segment(GUEST_IP, gw_ip, 80, sport, 5000, seq + 1, 0x12, gw_mac))
    client.setblocking(True)
    client.settimeout(0.05)
    client.send(b"ping")        # completes once passt has seen the SYN-ACK

    def data_arrived():
        return next((f for f in guest.frames if f.endswith(b"ping")), None)
    loop.run_until(data_arrived)
    client.close()
    # Nothing the guest opens itself goes out: a SYN to the gateway's port 22 is dropped and counted.
    before = up.guard.dropped
    bridge.input(guest.name, tcp_segment(GUEST_IP, gw_ip, 40000, 22, 1, 0, 0x02, gw_mac))
    assert up.guard.dropped == before + 1


def test_frames_of_other_ports_never_reach_passt(uplink):
    loop, bridge, guest, up, _ = uplink

    class Other:
        name = "vif10.0"

        def deliver(self, frame):
            pass
    bridge.attach(Other())
    bridge.input("vif10.0", dhcp_discover())
    assert up.guard.dropped == 1 and up.guard.allowed == 0


def test_a_dying_passt_is_one_line(uplink, caplog):
    loop, bridge, guest, up, _ = uplink
    up.proc.kill()
    loop.run_until(lambda: up.down_reason)
    assert up.down_reason.startswith("passt for passt-test is gone")
    assert "\n" not in up.down_reason
    bridge.input(guest.name, dhcp_discover())     # no socket: counted, nothing raised
    assert up.send_dropped == 1


def test_missing_passt_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    up = PasstUplink("p", Bridge("b"), UplinkGuard("v", []), [], str(tmp_path), lambda *a: None, lambda *a: None)
    with pytest.raises(UplinkError, match="passt is not installed"):
        up.start()

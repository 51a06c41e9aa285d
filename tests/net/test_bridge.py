"""The learning bridge and the uplink guard, sans-IO: frames that never leave the test."""
from __future__ import annotations

import struct

import pytest

from dom0.net.bridge import Bridge, Switch
from dom0.net.uplink import Forward, FrameDecoder, UplinkGuard, encode_frame, parse_forwards
from dom0.net.vif import generated_mac
from tests.net.kit import BROADCAST, MAC_A, MAC_B, tcp_frame, udp_frame

MAC_C = bytes.fromhex("00163e000003")


class Sink:
    def __init__(self, name):
        self.name = name
        self.frames = []

    def deliver(self, frame):
        self.frames.append(frame)


def frame(dst, src, body=b"x" * 50):
    return dst + src + b"\x08\x00" + body


def test_unknown_and_broadcast_flood_known_unicast_goes_to_one_port():
    bridge = Bridge("br")
    a, b, c = Sink("a"), Sink("b"), Sink("c")
    for port in (a, b, c):
        bridge.attach(port)
    bridge.input("a", frame(MAC_B, MAC_A))             # B unknown: flooded
    assert (len(a.frames), len(b.frames), len(c.frames)) == (0, 1, 1)
    bridge.input("b", frame(MAC_A, MAC_B))             # A learnt on port a
    assert (len(a.frames), len(b.frames), len(c.frames)) == (1, 1, 1)
    bridge.input("c", frame(BROADCAST, MAC_C))
    assert (len(a.frames), len(b.frames), len(c.frames)) == (2, 2, 1)
    counters = bridge.counters()
    assert counters["a"]["rx_frames"] == 1 and counters["a"]["tx_frames"] == 2


def test_mac_table_is_bounded_and_ages():
    switch = Switch(max_macs=4, max_age=10)
    for name in ("a", "b"):
        switch.add_port(name)
    for i in range(100):
        switch.forward("a", frame(BROADCAST, bytes([0, 0x16, 0x3e, 0, 0, i])), now=0)
    assert len(switch.macs) == 4
    switch.forward("a", frame(BROADCAST, MAC_A), now=0)
    assert switch.lookup(MAC_A, now=5) == "a"
    assert switch.lookup(MAC_A, now=11) is None


def test_multicast_sources_are_not_learnt_and_runts_are_counted():
    switch = Switch()
    switch.add_port("a")
    switch.add_port("b")
    switch.forward("a", frame(MAC_B, BROADCAST), now=0)
    assert BROADCAST not in switch.macs
    assert switch.forward("a", b"short", now=0) == []
    assert switch.ports["a"].dropped == 1


def test_a_frame_to_its_own_port_is_not_sent_back():
    switch = Switch()
    switch.add_port("a")
    switch.add_port("b")
    switch.forward("a", frame(BROADCAST, MAC_A), now=0)
    assert switch.forward("a", frame(MAC_A, MAC_C), now=0) == []


GUEST, GW = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2])


def arp_frame(op: int, target_ip: bytes, src=MAC_A, dst=BROADCAST) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + src + GUEST + bytes(6) + target_ip
    return dst + src + b"\x08\x06" + body


def test_guard_asks_passt_only_for_the_gateway():
    """passt answers ARP for every address but the guest's: asked for a bridge-mate, it
    would take that guest's traffic (dropped here) before the bridge-mate could answer."""
    guard = UplinkGuard("vif1.0", [])
    assert guard.allow("vif1.0", arp_frame(1, GW))
    assert not guard.allow("vif1.0", arp_frame(1, bytes([10, 0, 2, 16])))
    assert guard.allow("vif1.0", arp_frame(2, GW, dst=MAC_B))             # answering passt
    assert not guard.allow("vif1.0", arp_frame(1, GW)[:30])                # a short ARP frame
    outbound = UplinkGuard("vif1.0", [], outbound=True)
    assert not outbound.allow("vif1.0", arp_frame(1, bytes([10, 0, 2, 16])))
    assert guard.dropped == 2 and guard.allowed == 2


def test_guard_lets_only_arp_dhcp_and_host_opened_connections_out():
    guard = UplinkGuard("vif1.0", [Forward("tcp", "127.0.0.1", 8080, 80)])
    arp = arp_frame(1, GW)
    dhcp = udp_frame(b"discover", dst=BROADCAST, sport=68, dport=67)
    assert guard.allow("vif1.0", arp) and guard.allow("vif1.0", dhcp)
    reply = tcp_frame(0x12, sport=80, dport=40000, src_ip=GUEST, dst_ip=GW)
    assert not guard.allow("vif1.0", reply)                 # no connection yet
    outgoing = tcp_frame(0x02, sport=40001, dport=443, src_ip=GUEST, dst_ip=bytes([93, 184, 216, 34]))
    assert not guard.allow("vif1.0", outgoing)              # the guest may not open anything
    dns = udp_frame(b"q", sport=5353, dport=53, src_ip=GUEST, dst_ip=GW)
    assert not guard.allow("vif1.0", dns)
    # the host connects to 127.0.0.1:8080; passt brings the SYN to guest port 80
    guard.observe_inbound(tcp_frame(0x02, sport=40000, dport=80, src_ip=GW, dst_ip=GUEST))
    assert guard.allow("vif1.0", reply)
    assert not guard.allow("vif1.0", tcp_frame(0x12, sport=81, dport=40000, src_ip=GUEST, dst_ip=GW))
    assert not guard.allow("vif2.0", reply)                 # another guest's frames never go out
    assert guard.dropped == 5 and guard.allowed == 3


def test_guard_ignores_syns_to_ports_not_forwarded_and_is_bounded():
    guard = UplinkGuard("v", [Forward("tcp", "127.0.0.1", 8080, 80)], max_connections=16)
    guard.observe_inbound(tcp_frame(0x02, sport=40000, dport=22, src_ip=GW, dst_ip=GUEST))
    assert not guard.connections
    for port in range(1000, 1100):
        guard.observe_inbound(tcp_frame(0x02, sport=port, dport=80, src_ip=GW, dst_ip=GUEST))
    assert len(guard.connections) == 16


def test_outbound_allow_lifts_the_guard_for_the_owner_only():
    guard = UplinkGuard("v", [], outbound=True)
    anything = tcp_frame(0x02, sport=40001, dport=443, src_ip=GUEST, dst_ip=bytes([1, 1, 1, 1]))
    assert guard.allow("v", anything) and not guard.allow("w", anything)


def test_frame_decoder_handles_split_and_joined_frames_and_refuses_giants():
    decoder = FrameDecoder()
    data = encode_frame(b"a" * 60) + encode_frame(b"b" * 70)
    assert decoder.feed(data[:10]) == []
    assert decoder.feed(data[10:]) == [b"a" * 60, b"b" * 70]
    with pytest.raises(ValueError):
        FrameDecoder().feed(struct.pack("!I", 1 << 30))


def test_forward_specs():
    assert parse_forwards("tcp:127.0.0.1:8080:80;udp:127.0.0.1:5000:5000") == [
        Forward("tcp", "127.0.0.1", 8080, 80), Forward("udp", "127.0.0.1", 5000, 5000)]
    for bad in ("tcp:8080:80", "sctp:127.0.0.1:1:1", "tcp:localhost:1:1", "tcp:127.0.0.1:0:80"):
        with pytest.raises(ValueError):
            parse_forwards(bad)


def test_generated_macs_are_xen_stable_and_unicast():
    mac = generated_mac("web", 0)
    assert mac == generated_mac("web", 0) != generated_mac("web", 1) != generated_mac("db", 0)
    assert mac.startswith("00:16:3e:") and int(mac.split(":")[3], 16) < 0x80


def test_vif_settings_from_xl_specs():
    from dom0.net.vif import settings_from_spec
    from dom0.toolstack.config import parse_vif
    s = settings_from_spec(parse_vif("bridge=br1, ip=10.0.2.20, forward=tcp:127.0.0.1:8080:80"), "web", 0)
    assert (s.bridge, s.guest_ip, s.forwards[0].host_port, s.outbound) == ("br1", "10.0.2.20", 8080, False)
    assert s.backend_keys()["forward"] == "tcp:127.0.0.1:8080:80" and s.frontend_keys()["mac"] == s.mac
    for bad in ("ip=10.0.0.300", "outbound=sometimes", "script=vif-nat", "devid=x"):
        with pytest.raises(ValueError):
            settings_from_spec(parse_vif(bad), "web", 0)

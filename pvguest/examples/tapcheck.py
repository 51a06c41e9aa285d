"""A Python guest whose vif 0 is on a Linux bridge (script=vif-bridge): it talks to the host's kernel.

    kernel = "python:pvguest.examples.tapcheck:arp_ping"
    extra = "guest_ip=10.99.0.2 peer_ip=10.99.0.1 linger=60"

It asks the Linux bridge's address for its MAC (ARP), then pings it (ICMP
echo), and reports what the host's kernel answered (data/report, as
netcheck's guests do).  Every frame stays on the bridge the test made.
"""
from __future__ import annotations

import ipaddress
import struct
import time
import traceback

from pvguest.examples.netcheck import _frames, _report
from pvguest.netfront import Netfront, eth_frame

BROADCAST = b"\xff" * 6
ETHERTYPE_ARP, ETHERTYPE_IPV4 = 0x0806, 0x0800
ARP_REQUEST, ARP_REPLY = 1, 2
ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_request(mac: bytes, ip: bytes, target: bytes) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, ETHERTYPE_IPV4, 6, 4, ARP_REQUEST, mac, ip, b"\0" * 6, target)
    return eth_frame(BROADCAST, mac, ETHERTYPE_ARP, body)


def arp_reply_mac(frame: bytes, ip: bytes, target: bytes) -> bytes | None:
    """The sender MAC of an ARP reply from `target` to `ip`, else None."""
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETHERTYPE_ARP:
        return None
    op, sha, spa, _, tpa = struct.unpack_from("!H6s4s6s4s", frame, 20)
    return sha if op == ARP_REPLY and spa == target and tpa == ip else None


def echo_request(dst_mac: bytes, mac: bytes, ip: bytes, target: bytes, seq: int, payload: bytes) -> bytes:
    icmp = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, 0x7AB, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", _inet_checksum(icmp)) + icmp[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq, 0, 64, 1, 0, ip, target)
    hdr = hdr[:10] + struct.pack("!H", _inet_checksum(hdr)) + hdr[12:]
    return eth_frame(dst_mac, mac, ETHERTYPE_IPV4, hdr + icmp)


def echo_reply_seq(frame: bytes, target: bytes, payload: bytes) -> int | None:
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETHERTYPE_IPV4 or frame[23] != 1:
        return None
    ihl = (frame[14] & 0xF) * 4
    icmp = frame[14 + ihl:]
    if frame[26:30] != target or len(icmp) < 8 or icmp[0] != ICMP_ECHO_REPLY or icmp[8:] != payload:
        return None
    return struct.unpack_from("!H", icmp, 6)[0]


def arp_ping(kernel, *args) -> None:
    report: dict = {}
    try:
        nf = Netfront(kernel, 0)
        ip = ipaddress.IPv4Address(kernel.params.get("guest_ip", "10.99.0.2")).packed
        target = ipaddress.IPv4Address(kernel.params.get("peer_ip", "10.99.0.1")).packed
        report["mac"] = nf.mac.hex(":")
        peer_mac = None
        deadline = time.monotonic() + 30
        while peer_mac is None and time.monotonic() < deadline:
            nf.send(arp_request(nf.mac, ip, target))
            for frame in _frames(nf.receive(timeout=0.5)):
                peer_mac = peer_mac or arp_reply_mac(frame, ip, target)
        report["arp_reply_from"] = peer_mac.hex(":") if peer_mac else None
        if peer_mac is not None:
            payload = bytes(range(56))
            answered = []
            for seq in range(1, 4):
                nf.send(echo_request(peer_mac, nf.mac, ip, target, seq, payload))
                end = time.monotonic() + 5
                while seq not in answered and time.monotonic() < end:
                    answered += [s for s in map(lambda f: echo_reply_seq(f, target, payload),
                                                _frames(nf.receive(timeout=0.5))) if s is not None]
            report["echo_replies"] = sorted(set(answered))
    except Exception:
        report["error"] = traceback.format_exc()
    _report(kernel, report)

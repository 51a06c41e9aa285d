"""Helpers of the net tests: a page-dictionary grant copier and frame builders.

``PageCopier`` stands for GNTTABOP_copy in the sans-IO tests only (grefs
name bytearrays; an unknown gref fails as a bad grant would); everything
through a real dom0 uses the hypervisor.
"""
from __future__ import annotations

import struct

from abi.grant_table import GNTST_bad_gntref, GNTST_okay
from abi.x86_pte import PAGE_SIZE
from dom0.net.checksum import checksum
from pvguest.netfront import Buffer, NetfrontRings

MAC_A = bytes.fromhex("00163e000001")
MAC_B = bytes.fromhex("00163e000002")
BROADCAST = b"\xff" * 6


class PageCopier:
    def __init__(self):
        self.pages: dict[int, bytearray] = {}
        self.calls = 0

    def page(self, gref: int) -> memoryview:
        self.pages[gref] = bytearray(PAGE_SIZE)
        return memoryview(self.pages[gref])

    def from_guest(self, domid, pieces):
        self.calls += 1
        out = []
        for gref, offset, size in pieces:
            page = self.pages.get(gref)
            out.append(None if page is None or offset + size > PAGE_SIZE else bytes(page[offset:offset + size]))
        return out

    def to_guest(self, domid, pieces):
        self.calls += 1
        out = []
        for gref, offset, data in pieces:
            page = self.pages.get(gref)
            if page is None or offset + len(data) > PAGE_SIZE:
                out.append(GNTST_bad_gntref)
            else:
                page[offset:offset + len(data)] = data
                out.append(GNTST_okay)
        return out


def rings_pair(copier: PageCopier, tx_buffers: int = 32, rx_buffers: int = 16):
    """(frontend rings, tx ring page, rx ring page) with buffers at grefs 100.. and 1000.."""
    tx_page, rx_page = bytearray(PAGE_SIZE), bytearray(PAGE_SIZE)
    tx = [Buffer(100 + i, copier.page(100 + i)) for i in range(tx_buffers)]
    rx = [Buffer(1000 + i, copier.page(1000 + i)) for i in range(rx_buffers)]
    front = NetfrontRings(memoryview(tx_page), memoryview(rx_page), tx, rx)
    return front, tx_page, rx_page


def udp_frame(payload: bytes, src=MAC_A, dst=MAC_B, sport=1234, dport=5678,
              src_ip=bytes([10, 0, 0, 1]), dst_ip=bytes([10, 0, 0, 2]), good_checksum=True) -> bytes:
    udp_len = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    if good_checksum:
        pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, 17, udp_len)
        value = checksum(udp, pseudo) or 0xFFFF
        udp = udp[:6] + struct.pack("!H", value) + udp[8:]
    return dst + src + b"\x08\x00" + ip + udp


def tcp_frame(flags: int, src=MAC_A, dst=MAC_B, sport=80, dport=40000, src_ip=bytes([10, 0, 2, 15]),
              dst_ip=bytes([10, 0, 2, 2]), payload: bytes = b"", check: int = 0) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, check, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src_ip, dst_ip)
    return dst + src + b"\x08\x00" + ip + tcp
